"""What the first chunk is: the first generated packet, not a service notification.

The Responses API opens a stream with ``response.created``,
``response.in_progress``, ``response.output_item.added`` (and
``response.content_part.added``) before the first ``response.*.delta``;
Anthropic with ``message_start`` and ``content_block_start``. Those come at
once, whatever the model is doing, so time to first chunk, the gaps and the
first gap start at the first delta (they still count as chunks). Chat completions' first chunk is
generated already (it carries the first token), so it counts as before.
"""

from __future__ import annotations

import types

import pytest

from llm_stream_otel import semconv as t
from llm_stream_otel.providers.openai.chunks import is_response_notice, read_response_event
from llm_stream_otel.stream.monitor import StreamMonitor
from streaming import consume


def test_responses_time_to_first_chunk_waits_for_the_first_delta(instrumented, client):
    chunks, exc = consume(client, "responses", "none;first_delay=0.3")
    assert exc is None and chunks[0].type == "response.created"
    deltas = [c for c in chunks if c.type.endswith(".delta")]
    notices = chunks.index(deltas[0])
    assert notices == 4  # created, in_progress, output_item.added, content_part.added
    attrs = instrumented.span().attributes
    assert attrs[t.TIME_TO_FIRST_CHUNK] >= 0.3
    assert attrs[t.CHUNKS] == len(chunks)  # what the app read, notifications included
    assert attrs[t.STALL_COUNT] == 0  # the wait is part of time to first chunk, not a gap
    (ttfc,) = instrumented.points(t.METRIC_TIME_TO_FIRST_CHUNK)
    assert ttfc.sum >= 0.3
    (gaps,) = instrumented.points(t.METRIC_TIME_PER_OUTPUT_CHUNK)
    assert gaps.count == len(chunks) - notices - 1


def test_chat_first_chunk_is_still_the_first_chunk(instrumented, client):
    chunks, exc = consume(client, "chat", "none;first_delay=0.3")
    attrs = instrumented.span().attributes
    assert exc is None and attrs[t.CHUNKS] == len(chunks) and attrs[t.TIME_TO_FIRST_CHUNK] >= 0.3


def test_responses_cut_before_the_first_delta_has_no_first_chunk(instrumented, client):
    chunks, exc = consume(client, "responses", "reset_between;after=0")
    assert exc is not None and [c.type for c in chunks][-1] == "response.content_part.added"
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.TRUNCATION_REASON]) == (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET)
    assert attrs[t.CHUNKS] == len(chunks) == 4 and t.TIME_TO_FIRST_CHUNK not in attrs
    assert attrs[t.IDLE_BEFORE_END] < 0.2  # the silence counts from the last notification


@pytest.mark.parametrize("kind,notice", [("response.created", True), ("response.in_progress", True),
                                         ("response.output_item.added", True),
                                         ("response.output_text.delta", False),
                                         ("response.function_call_arguments.delta", False),
                                         ("response.reasoning_summary_text.delta", False)])
def test_response_notices(kind, notice):
    assert is_response_notice(types.SimpleNamespace(type=kind)) is notice


def test_notices_are_read_but_not_timed():
    response = types.SimpleNamespace(id="resp_1", model="m", usage=None)
    m = StreamMonitor(0.0, 0.5, reader=read_response_event, is_notice=is_response_notice)
    m.chunk(0.1, types.SimpleNamespace(type="response.created", response=response))
    assert m.response_id == "resp_1" and m.chunks == 1 and m.time_to_first_chunk is None and m.gaps == 0
    m.chunk(1.1, types.SimpleNamespace(type="response.output_text.delta", delta="hi"))
    m.chunk(1.2, types.SimpleNamespace(type="response.output_text.done"))
    assert m.chunks == 3 and m.gaps == 1 and m.time_to_first_chunk == pytest.approx(1.1) and m.stalls == 0
