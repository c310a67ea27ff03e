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


@pytest.mark.parametrize(
    "bounds",
    [t.SECONDS_BUCKETS, (), (0.5,), (0.01, 0.02), (0.01, 0.02, 0.04), (0.01, 0.02, 0.04, 0.08), (1.0, 2.0, 3.0, 4.0, 5.0)],
    ids=lambda b: f"{len(b)}-bounds",
)
def test_hot_path_bucket_is_the_bisect_bucket(bounds):
    """The compare chain over the first boundaries counts every gap where bisect_left would,
    boundary values and gaps past the last boundary included, for any number of boundaries."""
    import random
    from bisect import bisect_left

    rng = random.Random(7)
    gaps = [0.0, *bounds, *(b * (1 + 1e-12) for b in bounds), *(b * (1 - 1e-12) for b in bounds), 1e9]
    gaps += [rng.expovariate(1 / rng.choice([0.005, 0.03, 0.3, 3.0])) for _ in range(2000)]
    m = StreamMonitor(0.0, stall_threshold=1e12, bucket_bounds=bounds)
    now = 1.0
    m.chunk(now, None)
    expected = [0] * (len(bounds) + 1)
    for gap in gaps:
        before = now
        now += gap
        m.chunk(now, None)
        expected[bisect_left(bounds, now - before)] += 1
    assert m.gap_counts == expected
    assert m.chunks == len(gaps) + 1
    for gap in (*bounds, *(b * (1 + 1e-12) for b in bounds)):  # exactly on (and just past) each boundary
        exact = StreamMonitor(0.0, stall_threshold=1e12, bucket_bounds=bounds)
        exact.chunk(0.0, None)
        exact.chunk(gap, None)
        assert exact.gap_counts.index(1) == bisect_left(bounds, gap)


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


def _read_state(chunks):
    m = StreamMonitor(0.0, stall_threshold=1e9, reader=read_choices_chunk)
    for i, chunk in enumerate(chunks):
        m.chunk(1.0 + i, chunk)
    return (m.finish_reasons, m.max_choice, m.input_tokens, m.output_tokens, m.response_id, m.response_model)


def test_chat_reader_reads_sdk_models_from_their_fields_as_by_attribute():
    """The reader's ``__dict__`` reads give what attribute reads give, for the SDK's own
    chunk models (validated and ``construct``-ed without an index), and for a model whose
    usage is an extra field (an SDK without the field): that one is read by attribute."""
    import pydantic
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice

    def payload(index=True, finish=None, usage=None):
        choice = {"delta": {"content": "x"}, "finish_reason": finish}
        if index:
            choice["index"] = 1
        return {"id": "c-1", "object": "chat.completion.chunk", "created": 1, "model": "m-1", "choices": [choice], "usage": usage}

    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    payloads = [payload(), payload(finish="stop"), {**payload(), "choices": [], "usage": usage}]
    validated = [ChatCompletionChunk.model_validate(p) for p in payloads]
    constructed = [ChatCompletionChunk.construct(**{**p, "choices": [types.SimpleNamespace(**c) for c in p["choices"]]}) for p in payloads]

    def namespace(p):
        return types.SimpleNamespace(**{**p, "choices": [types.SimpleNamespace(**{"index": None, **c}) for c in p["choices"]]})

    expected = _read_state([namespace(p) for p in payloads])
    assert expected == (["stop"], 1, 3, 4, "c-1", "m-1")
    assert _read_state(validated) == expected
    assert _read_state(constructed) == expected
    # A compatible server that omits the index of its single choice: read as choice 0.
    no_index = [
        ChatCompletionChunk.construct(**{**p, "choices": [Choice.construct(**c) for c in p["choices"]]})
        for p in (payload(index=False), payload(index=False, finish="stop"), payloads[2])
    ]
    assert no_index[0].choices[0].index is None
    assert _read_state(no_index) == (["stop"], 0, 3, 4, "c-1", "m-1")

    class OldChunk(pydantic.BaseModel):  # an SDK whose chunk model has no usage field
        model_config = pydantic.ConfigDict(extra="allow")
        id: str
        model: str
        choices: list

    old = [OldChunk(**{k: v for k, v in p.items() if k != "usage"}, **({"usage": types.SimpleNamespace(**usage)} if p["usage"] else {})) for p in payloads]
    for chunk in old:
        chunk.choices = [types.SimpleNamespace(**{"index": 1, **c}) for c in chunk.choices]
    assert "usage" not in old[2].__dict__ and old[2].usage is not None
    assert _read_state(old) == expected


@pytest.mark.parametrize("threshold", [0.0, 0.005, 0.01, 0.015, 0.025, 0.05, 0.2, 5.0])
def test_stalls_and_buckets_with_a_threshold_inside_the_compare_chain(threshold):
    """The compare chain skips the stall check, so it must stop at the stall threshold:
    every gap above it is a stall and every gap lands in its bisect bucket, whatever the threshold."""
    import random
    from bisect import bisect_left

    rng = random.Random(threshold)
    bounds = t.SECONDS_BUCKETS
    gaps = [threshold, threshold * (1 + 1e-9) + 1e-12, *bounds[:5]] + [rng.uniform(0, 0.12) for _ in range(500)]
    m = StreamMonitor(0.0, stall_threshold=threshold, bucket_bounds=bounds, stall_event_limit=10_000)
    now = 1.0
    m.chunk(now, None)
    expected = [0] * (len(bounds) + 1)
    stalls = 0
    for gap in gaps:
        before = now
        now += gap
        m.chunk(now, None)
        expected[bisect_left(bounds, now - before)] += 1
        stalls += (now - before) > threshold
    assert m.gap_counts == expected
    assert m.stalls == stalls == len(m.stall_events)


def test_the_chat_reader_reads_ids_until_both_are_in():
    """Azure's first chunk has empty ids: the reader keeps reading them until both are there,
    then the monitor reads on without the check (``read_choices``)."""
    from llm_stream_otel.providers.openai.chunks import read_choices

    m = StreamMonitor(0.0, 5.0, reader=read_choices_chunk)
    first = chat_chunk(choices=False)
    first.id, first.model = "", ""
    m.chunk(0.1, first)
    assert m.reader is read_choices_chunk and m.response_id is None
    half = chat_chunk()
    half.model = ""
    m.chunk(0.2, half)
    assert m.reader is read_choices_chunk and m.response_id == "chatcmpl-1" and m.response_model is None
    m.chunk(0.3, chat_chunk())
    assert m.reader is read_choices and m.response_model == "m-1"
    later = chat_chunk(index=1, finish_reason="stop")
    later.id, later.model = "other", "other"
    m.chunk(0.4, later)
    assert (m.response_id, m.response_model) == ("chatcmpl-1", "m-1")
    assert m.max_choice == 1 and not m.terminal  # choice 0 has not finished
    m.chunk(0.5, chat_chunk(index=0, finish_reason="stop"))
    assert m.terminal
