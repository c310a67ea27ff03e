"""The pure stream state machine: timing, classification, finish-once."""

from __future__ import annotations

import types

import pytest

from llm_stream_otel import semconv as t
from llm_stream_otel.providers.openai.chunks import read_choices_chunk, read_response_event
from llm_stream_otel.stream.monitor import StreamMonitor


def chat_chunk(index=0, finish_reason=None, usage=None, choices=True):
    choice = types.SimpleNamespace(index=index, finish_reason=finish_reason, delta=types.SimpleNamespace(content="x"))
    return types.SimpleNamespace(
        id="chatcmpl-1", model="m-1", choices=[choice] if choices else [], usage=usage
    )


def test_timing_gaps_and_stalls():
    m = StreamMonitor(10.0, stall_threshold=1.0, reader=read_choices_chunk)
    for moment in (10.5, 10.6, 12.1, 12.2):
        m.chunk(moment, chat_chunk())
    m.chunk(12.3, chat_chunk(finish_reason="stop"))
    assert m.end(12.4)
    assert m.outcome == t.OUTCOME_COMPLETED and m.reason is None
    assert m.time_to_first_chunk == pytest.approx(0.5)
    assert m.duration == pytest.approx(2.4)
    assert m.chunks == 5
    assert m.stalls == 1
    assert m.gap_max == pytest.approx(1.5)
    assert m.stall_events[0][1] == pytest.approx(1.5)
    assert m.stall_events[0][2] == 3


def test_gap_replay_reproduces_count_sum_min_max_and_buckets():
    gaps = [0.001, 0.003, 0.005, 0.015, 0.5, 0.7, 3.0, 0.004]
    m = StreamMonitor(0.0, stall_threshold=2.0)
    now = 1.0
    m.chunk(now, None)
    for gap in gaps:
        now += gap
        m.chunk(now, None)
    replay = m.gap_replay()
    values = [value for value, count in replay for _ in range(count)]
    assert len(values) == len(gaps)
    assert sum(values) == pytest.approx(sum(gaps))
    assert min(values) == pytest.approx(min(gaps))
    assert max(values) == pytest.approx(max(gaps))
    from bisect import bisect_left

    def buckets(xs):
        return sorted(bisect_left(t.SECONDS_BUCKETS, x) for x in xs)

    assert buckets(values) == buckets(gaps)


@pytest.mark.parametrize(
    "finish_reason, outcome",
    [("stop", t.OUTCOME_COMPLETED), ("tool_calls", t.OUTCOME_COMPLETED), ("length", t.OUTCOME_LENGTH), ("content_filter", t.OUTCOME_CONTENT_FILTER)],
)
def test_finish_reasons(finish_reason, outcome):
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    m.chunk(0.1, chat_chunk())
    m.chunk(0.2, chat_chunk(finish_reason=finish_reason))
    m.end(0.3)
    assert m.outcome == outcome
    assert m.finish_reasons == [finish_reason]


def test_clean_end_without_finish_reason_is_missing_terminator():
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    m.chunk(0.1, chat_chunk())
    m.end(0.2)
    assert (m.outcome, m.reason) == (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR)


def test_n_greater_than_one_needs_every_choice_finished():
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    m.chunk(0.1, chat_chunk(index=0))
    m.chunk(0.1, chat_chunk(index=1))
    m.chunk(0.2, chat_chunk(index=0, finish_reason="stop"))
    assert not m.terminal
    m.end(0.3)
    assert m.reason == t.REASON_MISSING_TERMINATOR


def test_first_ending_wins():
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    m.chunk(0.1, chat_chunk())
    assert m.fail_stream(0.2, ConnectionResetError())
    assert not m.end(0.3)
    assert not m.abandon(0.4)
    assert (m.outcome, m.reason) == (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET)


def test_abandon_after_finish_reason_is_completed_and_before_is_abandoned():
    done = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    done.chunk(0.1, chat_chunk(finish_reason="stop"))
    done.abandon(0.2)
    assert done.outcome == t.OUTCOME_COMPLETED
    cut = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    cut.chunk(0.1, chat_chunk())
    cut.abandon(0.2)
    assert cut.outcome == t.OUTCOME_ABANDONED


def test_keyboard_interrupt_counts_as_abandoned():
    m = StreamMonitor(0.0, 5.0)
    m.fail_stream(0.1, KeyboardInterrupt())
    assert m.outcome == t.OUTCOME_ABANDONED


def test_usage_chunk_without_choices():
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    m.chunk(0.1, chat_chunk(finish_reason="stop"))
    m.chunk(0.2, chat_chunk(choices=False, usage=types.SimpleNamespace(prompt_tokens=7, completion_tokens=11)))
    m.end(0.3)
    assert (m.input_tokens, m.output_tokens) == (7, 11)
    assert m.outcome == t.OUTCOME_COMPLETED


def response_event(kind, **fields):
    return types.SimpleNamespace(type=kind, **fields)


def test_responses_events():
    response = types.SimpleNamespace(
        id="resp_1", model="m", usage=types.SimpleNamespace(input_tokens=3, output_tokens=4), incomplete_details=None
    )
    m = StreamMonitor(0.0, 5.0, reader=read_response_event)
    m.chunk(0.1, response_event("response.created", response=response))
    m.chunk(0.2, response_event("response.output_text.delta", delta="hi"))
    m.chunk(0.3, response_event("response.completed", response=response))
    m.end(0.4)
    assert m.outcome == t.OUTCOME_COMPLETED
    assert (m.response_id, m.input_tokens, m.output_tokens) == ("resp_1", 3, 4)

    incomplete = types.SimpleNamespace(
        id="resp_2", model="m", usage=None, incomplete_details=types.SimpleNamespace(reason="max_output_tokens")
    )
    m = StreamMonitor(0.0, 5.0, reader=read_response_event)
    m.chunk(0.1, response_event("response.incomplete", response=incomplete))
    m.end(0.2)
    assert m.outcome == t.OUTCOME_LENGTH

    m = StreamMonitor(0.0, 5.0, reader=read_response_event)
    m.chunk(0.1, response_event("response.output_text.delta", delta="x"))
    m.chunk(0.2, response_event("error", code="server_error", message="boom"))
    m.end(0.3)
    assert (m.outcome, m.reason) == (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT)


def test_content_capture_is_capped():
    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk, content_limit=3)
    for _ in range(5):
        m.chunk(0.1, chat_chunk())
    assert "".join(m.content) == "xxx"
    off = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    off.chunk(0.1, chat_chunk())
    assert off.content is None
