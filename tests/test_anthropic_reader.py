"""The Anthropic chunk reader and the core monitor, fed the REAL ``anthropic`` client's events.

No instrumentation here: the test reads the stream itself (as the proxy would)
and hands each event, the exception or the end to a :class:`StreamMonitor`
with the Anthropic reader, so the outcome rules are checked on what the SDK
really yields and raises for each fault of the fault server.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import pytest

anthropic = pytest.importorskip("anthropic")

from llm_stream_otel import semconv as t  # noqa: E402
from llm_stream_otel.providers.anthropic.chunks import (  # noqa: E402
    FINISH_OUTCOMES,
    is_error_event,
    is_message_notice,
    read_message_event,
)
from llm_stream_otel.stream.outcome import error_type  # noqa: E402
from llm_stream_otel.demo.anthropic_events import MessagesEvents  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402
from llm_stream_otel.stream.monitor import StreamMonitor  # noqa: E402
from tests.support.scripted import encode_script  # noqa: E402

CHUNKS = 6
MSGS = [{"role": "user", "content": "hello claude"}]


@pytest.fixture(scope="module")
def server():
    with FaultServer(chunks=CHUNKS) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: FaultServer):
    with anthropic.Anthropic(base_url=server.origin, api_key="test", max_retries=0, timeout=1.0) as c:
        yield c


def new_monitor(started_at: float, stall_threshold: float) -> StreamMonitor:
    """A monitor with the Anthropic provider's rules, as the core makes one per stream."""
    return StreamMonitor(started_at, stall_threshold, reader=read_message_event, finish_outcomes=FINISH_OUTCOMES,
                         is_error_event=is_error_event, is_notice=is_message_notice)


def monitored(client: Any, fault: str, helper: bool = False) -> StreamMonitor:
    """Read one stream to its end into a monitor: raw ``create(stream=True)`` or the ``stream()`` helper's raw events."""
    monitor = new_monitor(time.perf_counter(), 0.3)
    kwargs = dict(model="claude-test", max_tokens=50, messages=MSGS, extra_headers={"X-Fault": fault})
    try:
        if helper:
            with client.messages.stream(**kwargs) as stream:
                # The helper re-yields the raw events (plus its own `text` etc.): the proxy sits below it.
                for event in stream._raw_stream:
                    monitor.chunk(time.perf_counter(), event)
        else:
            for event in client.messages.create(stream=True, **kwargs):
                monitor.chunk(time.perf_counter(), event)
    except Exception as exc:  # noqa: BLE001
        monitor.fail_stream(time.perf_counter(), exc)
    else:
        monitor.end(time.perf_counter())
    return monitor


# fault -> (outcome, truncation reason, error.type or None)
CASES = {
    "none": (t.OUTCOME_COMPLETED, None, None),
    "tool_calls": (t.OUTCOME_COMPLETED, None, None),
    "length": (t.OUTCOME_LENGTH, None, None),
    "content_filter": (t.OUTCOME_CONTENT_FILTER, None, None),
    "error_event;after=2": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, "overloaded_error"),
    "error_event;after=2;type=api_error": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, "api_error"),
    "missing_terminator;after=2": (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR, None),
    "reset_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, None),
    "reset_between;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, None),
    "cut_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, None),
    "idle_cut;after=2;seconds=0.05": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, None),
    "stall;after=2;seconds=1.5": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, None),
    "hang;seconds=1.5": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, None),
}
STOP_REASONS = {"none": "end_turn", "tool_calls": "tool_use", "length": "max_tokens", "content_filter": "refusal"}


@pytest.mark.parametrize("helper", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("fault", list(CASES))
def test_outcome_per_fault(client: Any, fault: str, helper: bool) -> None:
    monitor = monitored(client, fault, helper)
    outcome, reason, event_type = CASES[fault]
    assert (monitor.outcome, monitor.reason) == (outcome, reason), monitor.error
    if event_type is not None:
        assert error_type(monitor.error) == event_type
    name = fault.split(";")[0]
    if name in STOP_REASONS:
        assert monitor.finish_reasons == [STOP_REASONS[name]] and not monitor.finish_reason_missing
        # message_start, content_block_start (not timed), the deltas, content_block_stop, message_delta, message_stop
        assert (monitor.chunks, monitor.gaps) == (CHUNKS + 5, CHUNKS + 2)
    if name != "hang":  # a hang sends nothing, not even message_start
        assert monitor.response_id.startswith("msg_") and monitor.response_model == "claude-test"


def test_usage_is_read_once_with_the_cache_in_the_total(client: Any) -> None:
    monitor = monitored(client, "none;cache_read=7;cache_creation=3")
    # message_start and message_delta both carry the cumulative input usage: not added twice.
    assert (monitor.input_tokens, monitor.cache_read_tokens, monitor.cache_creation_tokens) == (2 + 7 + 3, 7, 3)
    assert monitor.output_tokens == CHUNKS


def test_usage_of_a_cut_stream_is_the_input_only(client: Any) -> None:
    monitor = monitored(client, "reset_between;after=2")
    # message_delta never came; message_start's output_tokens (1) is a placeholder, not a count
    assert (monitor.input_tokens, monitor.output_tokens) == (2, None)


def test_time_to_first_chunk_counts_to_the_first_delta_not_message_start(client: Any) -> None:
    monitor = monitored(client, "none;first_delay=0.25")
    assert monitor.notice_at is not None and monitor.notice_at - monitor.started_at < 0.2
    assert monitor.time_to_first_chunk >= 0.25
    assert monitor.stalls == 0  # the wait before the first delta is not a gap


def test_a_cut_after_message_start_has_no_first_chunk(client: Any) -> None:
    monitor = monitored(client, "reset_between;after=0")
    assert (monitor.outcome, monitor.reason) == (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET)
    assert (monitor.chunks, monitor.gaps, monitor.time_to_first_chunk) == (2, 0, None)


def test_tool_input_deltas_are_generated_chunks(client: Any) -> None:
    monitor = monitored(client, "tool_calls;first_delay=0.2")
    assert monitor.time_to_first_chunk >= 0.2


def test_message_stop_without_a_stop_reason_is_complete_with_the_reason_missing() -> None:
    from anthropic.types import RawMessageStopEvent

    monitor = new_monitor(0.0, 1.0)
    monitor.chunk(0.1, RawMessageStopEvent(type="message_stop"))
    monitor.end(0.2)
    assert monitor.outcome == t.OUTCOME_COMPLETED and monitor.finish_reason_missing


def stream_events(stop_reason: str) -> List[Tuple[str, str]]:
    """A whole Messages stream ending with ``stop_reason``, as ``(event, data)`` pairs for a script."""
    builder = MessagesEvents("msg_scripted", "claude-test", ["Hi ", "there"], 2)
    raw = builder.preamble() + builder.step(0) + builder.step(1) + builder.finish(stop_reason)
    pairs = []
    for item in raw:
        head, data = item.decode().strip().split("\n")
        pairs.append((head[len("event: "):], data[len("data: "):]))
    return pairs


def test_a_stop_reason_without_message_stop_is_truncated(client: Any) -> None:
    events = stream_events("pause_turn")
    script = encode_script(events[:-1], fault="none")  # everything but message_stop
    monitor = new_monitor(time.perf_counter(), 1.0)
    for event in client.messages.create(model="claude-test", max_tokens=5, messages=MSGS, stream=True,
                                        extra_headers={"X-Script": script}):
        monitor.chunk(time.perf_counter(), event)
    monitor.end(time.perf_counter())
    assert (monitor.outcome, monitor.reason) == (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR)


@pytest.mark.parametrize("stop_reason,outcome", [("stop_sequence", t.OUTCOME_COMPLETED),
                                                 ("pause_turn", t.OUTCOME_COMPLETED),
                                                 ("model_context_window_exceeded", t.OUTCOME_LENGTH)])
def test_other_stop_reasons(client: Any, stop_reason: str, outcome: str) -> None:
    monitor = new_monitor(time.perf_counter(), 1.0)
    for event in client.messages.create(model="claude-test", max_tokens=5, messages=MSGS, stream=True,
                                        extra_headers={"X-Script": encode_script(stream_events(stop_reason))}):
        monitor.chunk(time.perf_counter(), event)
    monitor.end(time.perf_counter())
    assert monitor.outcome == outcome and monitor.finish_reasons == [stop_reason]
