"""The anthropic provider end to end: the REAL anthropic client (1.x or 2.x) against the fault server,
instrumented, with real OTel SDK spans and metrics read back.

Every fault of the fault server, through ``messages.create(stream=True)`` and
the ``messages.stream()`` helper, sync and async: the outcome, the truncation
reason and ``error.type`` on the span and the outcome counter; usage, ids,
finish reasons; time to first chunk from the first generated delta; SDK
retries (``x-stainless-retry-count``), application retries and the fix rate.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, List, Optional, Tuple

import pytest

anthropic = pytest.importorskip("anthropic")

from llm_stream_otel import semconv as t  # noqa: E402
from llm_stream_otel.demo.fault_plan import answer_for  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402

CHUNKS = 6
MODEL = "claude-test"
_ids = itertools.count()


def prompt(label: str) -> str:
    return f"claude {label} #{next(_ids)}"


@pytest.fixture(scope="module")
def fault_server():
    with FaultServer(chunks=CHUNKS) as srv:
        yield srv


@pytest.fixture
def sync_client(fault_server: FaultServer):
    with anthropic.Anthropic(base_url=fault_server.origin, api_key="sk-ant-SECRET", max_retries=0, timeout=0.5) as c:
        yield c


def _kwargs(fault: str, text: str, **extra: Any) -> dict:
    headers = {"X-Fault": fault, **extra.pop("extra_headers", {})}
    return dict(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}], extra_headers=headers, **extra)


def read_sync(client: Any, how: str, fault: str, text: str, **extra: Any) -> Tuple[List[Any], Optional[BaseException]]:
    """Read one stream as an app does; return what it got (events, or text pieces) and the exception."""
    got: List[Any] = []
    try:
        if how == "create":
            for event in client.messages.create(stream=True, **_kwargs(fault, text, **extra)):
                got.append(event)
        else:
            with client.messages.stream(**_kwargs(fault, text, **extra)) as stream:
                got.extend(stream.text_stream)
                stream.get_final_message()
    except Exception as exc:  # noqa: BLE001
        return got, exc
    return got, None


def read_async(origin: str, how: str, fault: str, text: str, **extra: Any) -> Tuple[List[Any], Optional[BaseException]]:
    async def main() -> Tuple[List[Any], Optional[BaseException]]:
        got: List[Any] = []
        async with anthropic.AsyncAnthropic(base_url=origin, api_key="k", max_retries=0, timeout=0.5) as client:
            try:
                if how == "create":
                    stream = await client.messages.create(stream=True, **_kwargs(fault, text, **extra))
                    async for event in stream:
                        got.append(event)
                else:
                    async with client.messages.stream(**_kwargs(fault, text, **extra)) as stream:
                        async for piece in stream.text_stream:
                            got.append(piece)
                        await stream.get_final_message()
            except Exception as exc:  # noqa: BLE001
                return got, exc
        return got, None

    return asyncio.run(main())


# fault -> (outcome, truncation reason, error.type (None: none; "class": the exception's class name))
FAULTS = {
    "none": (t.OUTCOME_COMPLETED, None, None),
    "tool_calls": (t.OUTCOME_COMPLETED, None, None),
    "length": (t.OUTCOME_LENGTH, None, None),
    "content_filter": (t.OUTCOME_CONTENT_FILTER, None, None),
    "error_event;after=2": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, "overloaded_error"),
    "error_event;after=2;type=api_error": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, "api_error"),
    "missing_terminator;after=2": (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR, t.REASON_MISSING_TERMINATOR),
    "reset_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, "class"),
    "reset_between;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, "class"),
    "cut_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, "class"),
    "idle_cut;after=2;seconds=0.05": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, "class"),
    "stall;after=2;seconds=1": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, "class"),
    "hang;seconds=1": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, "class"),
    "overloaded": (t.OUTCOME_FAILED, None, "class"),
    "http_429": (t.OUTCOME_FAILED, None, "class"),
    "http_500": (t.OUTCOME_FAILED, None, "class"),
    "http_503": (t.OUTCOME_FAILED, None, "class"),
    "http_502": (t.OUTCOME_FAILED, None, "class"),
    "http_504": (t.OUTCOME_FAILED, None, "class"),
}
STOP_REASONS = {"none": "end_turn", "tool_calls": "tool_use", "length": "max_tokens", "content_filter": "refusal"}


def check(telemetry: Any, fault: str, exc: Optional[BaseException]) -> dict:
    outcome, reason, error = FAULTS[fault]
    span = telemetry.span()
    attrs = dict(span.attributes)
    assert span.name == f"chat {MODEL}"
    assert attrs[t.GEN_AI_PROVIDER_NAME] == "anthropic" and attrs[t.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[t.GEN_AI_REQUEST_MODEL] == MODEL and attrs[t.GEN_AI_REQUEST_STREAM] is True
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == (outcome, reason), (attrs, exc)
    expected_error = type(exc).__qualname__ if error == "class" else error
    assert attrs.get(t.ERROR_TYPE) == expected_error, (attrs, repr(exc))
    (point,) = telemetry.points(t.METRIC_OUTCOMES)
    labels = dict(point.attributes)
    assert (labels[t.OUTCOME], labels.get(t.TRUNCATION_REASON)) == (outcome, reason)
    assert labels[t.GEN_AI_PROVIDER_NAME] == "anthropic" and labels.get(t.ERROR_TYPE) == expected_error
    name = fault.split(";")[0]
    if name in STOP_REASONS:
        assert exc is None
        assert list(attrs[t.GEN_AI_RESPONSE_FINISH_REASONS]) == [STOP_REASONS[name]]
        assert attrs[t.GEN_AI_USAGE_OUTPUT_TOKENS] == CHUNKS
        assert attrs[t.CHUNKS] == CHUNKS + 5  # every raw event read, message_start included
    if outcome != t.OUTCOME_FAILED and name != "hang":
        assert attrs[t.GEN_AI_RESPONSE_ID].startswith("msg_") and attrs[t.GEN_AI_RESPONSE_MODEL] == MODEL
        assert attrs[t.GEN_AI_USAGE_INPUT_TOKENS] == 3  # "claude <label> #<n>"
    return attrs


@pytest.mark.parametrize("how", ["create", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_sync(instrumented: Any, sync_client: Any, fault: str, how: str) -> None:
    got, exc = read_sync(sync_client, how, fault, prompt(fault))
    check(instrumented, fault, exc)


@pytest.mark.parametrize("how", ["create", "stream"])
@pytest.mark.parametrize("fault", [f for f in FAULTS if not f.startswith(("stall", "hang", "http_50"))])
def test_async(instrumented: Any, fault_server: FaultServer, fault: str, how: str) -> None:
    got, exc = read_async(fault_server.origin, how, fault, prompt(fault))
    check(instrumented, fault, exc)


def test_the_app_gets_what_it_would_without_us(instrumented: Any, sync_client: Any) -> None:
    text = prompt("same")
    got, exc = read_sync(sync_client, "stream", "none", text)
    assert exc is None and "".join(got) == "".join(answer_for(text, CHUNKS))
    events, exc = read_sync(sync_client, "create", "error_event;after=2", prompt("same"))
    assert type(exc) is anthropic.APIStatusError and exc.status_code == 200  # the SDK's own exception, untouched
    assert [type(e).__name__ for e in events][:2] == ["RawMessageStartEvent", "RawContentBlockStartEvent"]


def test_time_to_first_chunk_is_to_the_first_delta(instrumented: Any, sync_client: Any) -> None:
    read_sync(sync_client, "create", "none;first_delay=0.3", prompt("ttfc"))
    attrs = instrumented.span().attributes
    assert attrs[t.TIME_TO_FIRST_CHUNK] >= 0.3 and attrs[t.TIME_TO_HEADERS] < 0.2
    assert attrs[t.STALL_COUNT] == 0 and attrs[t.MAX_GAP] < 0.3
    (gaps,) = instrumented.points(t.METRIC_TIME_PER_OUTPUT_CHUNK)
    assert gaps.count == CHUNKS + 2  # from the first delta: deltas, content_block_stop, message_delta, message_stop


def test_usage_with_the_cache(instrumented: Any, sync_client: Any) -> None:
    read_sync(sync_client, "stream", "none;cache_read=7;cache_creation=4", prompt("cache"))
    attrs = instrumented.span().attributes
    assert attrs[t.GEN_AI_USAGE_INPUT_TOKENS] == 3 + 7 + 4  # semconv: input includes the cached tokens
    assert attrs[t.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 7
    assert attrs[t.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 4
    by_type = {p.attributes[t.GEN_AI_TOKEN_TYPE]: p.sum for p in instrumented.points(t.METRIC_TOKEN_USAGE)}
    assert by_type == {"input": 14, "output": CHUNKS}  # message_delta repeats the input usage: counted once


def test_a_cut_stream_reports_its_input_tokens_without_an_error_type(instrumented: Any, sync_client: Any) -> None:
    read_sync(sync_client, "create", "reset_between;after=2", prompt("cut-usage"))
    attrs = instrumented.span().attributes
    assert attrs[t.GEN_AI_USAGE_INPUT_TOKENS] == 3 and t.GEN_AI_USAGE_OUTPUT_TOKENS not in attrs
    (point,) = instrumented.points(t.METRIC_TOKEN_USAGE)
    assert point.attributes[t.GEN_AI_TOKEN_TYPE] == "input" and t.ERROR_TYPE not in point.attributes


def test_request_id_and_status_of_the_response(instrumented: Any, sync_client: Any) -> None:
    read_sync(sync_client, "create", "reset_between;after=1", prompt("rid"))
    attrs = instrumented.span().attributes
    assert attrs[t.HTTP_REQUEST_ID].startswith("req_") and attrs[t.HTTP_RESPONSE_STATUS_CODE] == 200


def test_sdk_retries_of_529_then_a_stream(instrumented: Any, fault_server: FaultServer) -> None:
    with anthropic.Anthropic(base_url=fault_server.origin, api_key="k", max_retries=2, timeout=2.0) as client:
        got, exc = read_sync(client, "stream", "overloaded;first=2", prompt("sdk"))
    assert exc is None and got
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.SDK_RETRIES]) == (t.OUTCOME_COMPLETED, 2)
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 2


def test_sdk_retries_exhausted_is_one_failed_call(instrumented: Any, fault_server: FaultServer) -> None:
    with anthropic.Anthropic(base_url=fault_server.origin, api_key="k", max_retries=1, timeout=2.0) as client:
        got, exc = read_sync(client, "create", "overloaded", prompt("sdk-fail"))
    assert type(exc).__name__ == "OverloadedError"
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.SDK_RETRIES], attrs[t.HTTP_RESPONSE_STATUS_CODE]) == (t.OUTCOME_FAILED, 1, 529)
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 1


def test_app_retry_of_an_overloaded_cut_is_a_fix(instrumented: Any, fault_server: FaultServer) -> None:
    text = prompt("app")
    with anthropic.Anthropic(base_url=fault_server.origin, api_key="k", max_retries=2, timeout=2.0) as client:
        attempts = 0
        for attempts in (1, 2, 3):
            got, exc = read_sync(client, "stream", "error_event;after=2;first=1", text)
            if exc is None:
                break
    assert attempts == 2  # the SDK retried nothing: the error came after the 200
    first, second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert (first.attributes[t.OUTCOME], first.attributes[t.TRUNCATION_REASON]) == (t.OUTCOME_TRUNCATED,
                                                                                     t.REASON_ERROR_EVENT)
    assert t.SDK_RETRIES not in first.attributes
    assert second.attributes[t.IS_RETRY] is True and second.attributes[t.RETRY_LAYER] == "application"
    assert second.attributes[t.RECOVERED_AFTER_ATTEMPTS] == 2
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 1
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_leaving_the_helper_early_is_abandoned(instrumented: Any, sync_client: Any) -> None:
    with sync_client.messages.stream(**_kwargs("none;delay=0.01", prompt("early"))) as stream:
        for _ in stream.text_stream:
            break
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_ABANDONED


def test_beta_messages(instrumented: Any, sync_client: Any) -> None:
    with sync_client.beta.messages.stream(**_kwargs("length", prompt("beta"))) as stream:
        stream.get_final_message()
    for _ in sync_client.beta.messages.create(stream=True, **_kwargs("none", prompt("beta"))):
        pass
    outcomes = sorted(s.attributes[t.OUTCOME] for s in instrumented.stream_spans())
    assert outcomes == [t.OUTCOME_COMPLETED, t.OUTCOME_LENGTH]


def test_non_streaming_and_raw_responses_are_left_alone(instrumented: Any, sync_client: Any) -> None:
    message = sync_client.messages.create(**_kwargs("none", prompt("plain")))
    assert message.stop_reason == "end_turn"
    raw = sync_client.messages.with_raw_response.create(stream=True, **_kwargs("none", prompt("raw")))
    raw.http_response.read()
    assert instrumented.stream_spans() == []


# --- the resilient helper --------------------------------------------------------------------------

FAST = dict(initial_backoff=0.01, max_backoff=0.05)


def streamed_text(events: List[Any]) -> str:
    return "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")


def test_resilient_restart_retries_an_overloaded_error_event(instrumented: Any, sync_client: Any) -> None:
    from llm_stream_otel.resilient import RetryPolicy, resilient_stream

    text = prompt("restart")
    restarts: List[Any] = []
    events = list(resilient_stream(sync_client.messages.create, policy=RetryPolicy(**FAST),
                                   on_restart=lambda n, why: restarts.append((n, why)),
                                   **_kwargs("error_event;after=2;first=1", text)))
    assert restarts == [(2, t.REASON_ERROR_EVENT)]
    assert streamed_text(events).endswith("".join(answer_for(text, CHUNKS)))
    first, second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert first.attributes[t.ERROR_TYPE] == "overloaded_error"
    assert second.attributes[t.RETRY_LAYER] == "helper" and second.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 1
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_resilient_continue_prefills_the_partial_text(instrumented: Any, fault_server: FaultServer,
                                                       sync_client: Any) -> None:
    from llm_stream_otel.resilient import RetryPolicy, resilient_stream

    text = prompt("continue")
    fault_server.reset()
    events = list(resilient_stream(sync_client.messages.create, policy=RetryPolicy(mode="continue", **FAST),
                                   **_kwargs("cut_mid_chunk;after=3;first=1", text)))
    assert streamed_text(events) == "".join(answer_for(text, CHUNKS))  # every character exactly once
    prefill = fault_server.requests[-1].body["messages"][-1]
    assert prefill["role"] == "assistant" and prefill["content"] == "".join(answer_for(text, 3)).rstrip()
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_resilient_async_retries_a_529(instrumented: Any, fault_server: FaultServer) -> None:
    from llm_stream_otel.resilient import RetryPolicy, aresilient_stream

    text = prompt("async")

    async def main() -> List[Any]:
        async with anthropic.AsyncAnthropic(base_url=fault_server.origin, api_key="k", max_retries=0) as client:
            return [e async for e in aresilient_stream(client.messages.create, policy=RetryPolicy(**FAST),
                                                       **_kwargs("overloaded;first=1", text))]

    events = asyncio.run(main())
    assert streamed_text(events) == "".join(answer_for(text, CHUNKS))
    outcomes = [s.attributes[t.OUTCOME] for s in sorted(instrumented.stream_spans(), key=lambda s: s.start_time)]
    assert outcomes == [t.OUTCOME_FAILED, t.OUTCOME_COMPLETED]
