"""Issue 11, items 2, 4, 5, 6, 7 and 9, through the real openai client and fault server.

(Items 1 and 8: tests/test_finalizers.py; item 3: tests/test_exit_spans.py.)
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import StatusCode

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel.stream import record as record_module
from llm_stream_otel.config import load_settings
from tests.support.scripted import encode_script
from llm_stream_otel.demo.summary import metric_points
from llm_stream_otel.resilient import RetryPolicy, aresilient_stream, resilient_stream
from streaming import request_kwargs

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


def waits_for_headers(seconds: float = 5.0) -> dict:
    """A streaming call whose response headers come only after ``seconds``
    (the server answers it as a plain response, after a pause)."""
    kwargs = request_kwargs("chat", f"hang;seconds={seconds}")
    kwargs["extra_body"] = {"stream": False}
    return kwargs


# --- item 2: cancellation before the first byte ---------------------------------
def test_task_cancelled_while_waiting_for_headers_is_abandoned_not_failed(instrumented, aclient):
    kwargs = waits_for_headers()

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(aclient.chat.completions.create(**kwargs), timeout=0.3)

    asyncio.run(main())
    span = instrumented.span()
    assert span.attributes["llm.stream.outcome"] == "abandoned"
    assert span.status.status_code == StatusCode.UNSET
    assert "error.type" not in span.attributes
    assert instrumented.total("llm.stream.outcomes", llm__stream__outcome="failed") == 0


def test_cancelled_attempt_is_not_remembered_as_a_failed_attempt(instrumented, aclient, client):
    kwargs = waits_for_headers()

    async def main() -> None:
        task = asyncio.ensure_future(aclient.chat.completions.create(**kwargs))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # The same request again: not an application retry.
    again = dict(kwargs, extra_headers={"X-Fault": "none"})
    again.pop("extra_body")
    for _ in client.chat.completions.create(**again):
        pass
    assert instrumented.total("llm.stream.retries") == 0
    assert [s.attributes["llm.stream.is_retry"] for s in instrumented.stream_spans()] == [False, False]


# --- item 4: async argument errors raise at the call ----------------------------
def test_async_argument_error_raises_at_the_call_and_records_nothing(instrumented, aclient):
    with pytest.raises(TypeError):
        aclient.chat.completions.create(model="gpt-test", stream=True)  # no messages, not awaited
    assert instrumented.spans() == []
    assert instrumented.total("llm.stream.outcomes") == 0


# --- item 5: the resilient helper ----------------------------------------------
class OpenSpans(SpanProcessor):
    """Spans started and not (yet) ended."""

    def __init__(self) -> None:
        self.open: dict = {}

    def on_start(self, span, parent_context=None) -> None:  # type: ignore[no-untyped-def]
        self.open[span.context.span_id] = span.name

    def on_end(self, span) -> None:  # type: ignore[no-untyped-def]
        self.open.pop(span.context.span_id, None)


@pytest.fixture
def open_spans(instrumented):
    processor = OpenSpans()
    instrumented.tracer_provider.add_span_processor(processor)
    return processor


def test_resilient_helper_never_iterated_starts_no_span(open_spans, aclient, client):
    resilient_stream(client.chat.completions.create, **request_kwargs("chat", "none"))
    aresilient_stream(aclient.chat.completions.create, **request_kwargs("chat", "none"))
    assert open_spans.open == {}


def test_cancelled_async_resilient_run_ends_its_span_and_closes_the_inner_stream(instrumented, open_spans, aclient):
    kwargs = request_kwargs("chat", "stall;after=2;seconds=5")

    async def consume() -> None:
        async for _chunk in aresilient_stream(aclient.chat.completions.create, policy=FAST, **kwargs):
            pass

    async def main() -> None:
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert open_spans.open == {}
    (parent,) = [s for s in instrumented.spans() if s.name.startswith("resilient")]
    assert parent.attributes["llm.stream.outcome"] == "abandoned"
    (attempt,) = instrumented.stream_spans()
    assert attempt.attributes["llm.stream.outcome"] == "abandoned"  # closed, not left to the GC


def test_recovered_resilient_run_is_not_an_error_and_exports_no_message(instrumented, client):
    kwargs = request_kwargs("chat", "http_503;first=1")
    chunks = list(resilient_stream(client.chat.completions.create, policy=FAST, **kwargs))
    assert chunks
    (parent,) = [s for s in instrumented.spans() if s.name.startswith("resilient")]
    assert parent.attributes["llm.stream.recovered_after_attempts"] == 2
    assert parent.status.status_code == StatusCode.UNSET
    for event in parent.events:
        assert "exception.message" not in event.attributes
        assert "exception.stacktrace" not in event.attributes


# --- item 6: exemplars name the stream span --------------------------------------
HISTOGRAMS = (
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk",
    "llm.stream.chunks",
    "gen_ai.client.token.usage",
)


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_exemplar_of_each_histogram_names_the_stream_span(telemetry, client, fast_path):
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, metrics_fast_path=fast_path
    )
    try:
        with telemetry.tracer_provider.get_tracer("app").start_as_current_span("app request"):
            for _ in client.chat.completions.create(**request_kwargs("chat", "none;usage=1")):
                pass
    finally:
        instrumentor.uninstrument()
    (span,) = telemetry.stream_spans()
    data = telemetry.reader.get_metrics_data()  # once: a collection resets the exemplar reservoirs
    for name in HISTOGRAMS:
        exemplars = [e for p in metric_points(data, name) for e in p.exemplars]
        assert exemplars, name
        assert {e.span_id for e in exemplars} == {span.context.span_id}, name


# --- item 7: our own errors are counted; steps are independent; strict mode -------
@pytest.fixture
def lenient(telemetry):
    """Strict off (this test injects a failure into our code on purpose)."""
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, strict=False
    )
    yield telemetry
    instrumentor.uninstrument()


def _broken_annotation(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise RuntimeError("injected: span annotation is broken")


def test_a_failing_step_is_counted_and_costs_only_itself(lenient, client, monkeypatch):
    monkeypatch.setattr(record_module, "annotate_span", _broken_annotation)
    for _ in client.chat.completions.create(**request_kwargs("chat", "none")):
        pass
    for _ in client.chat.completions.create(**request_kwargs("chat", "none")):
        pass
    assert lenient.total("llm.stream.outcomes", llm__stream__outcome="completed") == 2
    assert lenient.total("gen_ai.client.operation.duration") == 2
    assert lenient.total("llm.stream.internal_errors", llm__stream__error__place="span annotation") == 2
    assert len(lenient.stream_spans()) == 2  # still ended


def test_strict_mode_raises_our_internal_error(telemetry, client, monkeypatch):
    monkeypatch.setattr(record_module, "annotate_span", _broken_annotation)
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, strict=True
    )
    try:
        with pytest.raises(RuntimeError, match="injected"):
            for _ in client.chat.completions.create(**request_kwargs("chat", "none")):
                pass
    finally:
        instrumentor.uninstrument()


def test_strict_setting_from_the_environment():
    assert load_settings(environ={"OTEL_INSTRUMENTATION_LLM_STREAM_STRICT": "true"}).strict is True
    assert load_settings(environ={}).strict is False
    assert load_settings({"strict": False}, environ={"OTEL_INSTRUMENTATION_LLM_STREAM_STRICT": "true"}).strict is False


# --- item 9: a bare JSON chunk; the app closing the response ----------------------
def test_bare_json_value_chunk_is_tolerated_quietly(lenient, client, caplog):
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    last = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    script = encode_script(["42", chunk, last, "[DONE]"], "none")
    caplog.set_level(logging.DEBUG, logger="llm_stream_otel")
    seen = list(client.chat.completions.create(**request_kwargs("chat", "none", extra_headers={"X-Script": script})))
    assert seen[0] == 42
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert lenient.total("llm.stream.internal_errors") == 0
    assert lenient.span().attributes["llm.stream.outcome"] == "completed"


@pytest.mark.parametrize("use_async", [False, True])
def test_app_closing_the_response_mid_stream_is_abandoned(instrumented, client, aclient, use_async):
    kwargs = request_kwargs("chat", "stall;after=2;seconds=1")
    if use_async:

        async def main() -> None:
            stream = await aclient.chat.completions.create(**kwargs)
            chunks = aiter(stream)
            await anext(chunks)
            await anext(chunks)
            await stream.response.aclose()
            with pytest.raises(Exception):  # openai 3.x: APIConnectionError; 1.x: the transport's read error
                async for _ in chunks:
                    pass

        asyncio.run(main())
    else:
        stream = client.chat.completions.create(**kwargs)
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        stream.response.close()
        with pytest.raises(Exception):  # as above
            for _ in chunks:
                pass
    span = instrumented.span()
    assert span.attributes["llm.stream.outcome"] == "abandoned"
    assert span.status.status_code == StatusCode.UNSET
