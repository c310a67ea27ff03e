"""Isolation: a failure inside our code never reaches the app (issue 8).

Each test injects one failure (a monitor bug at every ending, metric
instruments that raise, a metric exporter that raises, a broken meter or
tracer provider, a span processor that raises, a retry-table bug, an SDK
retry hook bug) and checks that:
- the app gets exactly what it gets without us (same chunks, same exception);
- the failure is logged ONCE at WARNING with a clear message, whatever the
  number of streams that hit it (later ones at DEBUG);
- our span still ends exactly once when a span can be made.

``tests/test_lifecycle.py::test_broken_monitor_never_reaches_the_app`` covers
a failing ``StreamMonitor.chunk``; not repeated here.

Also: instrument / uninstrument cycles, double instrument, a stream that
outlives ``uninstrument()``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Optional, Tuple

import openai
import pytest
from opentelemetry.metrics import MeterProvider as ApiMeterProvider
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import TracerProvider as ApiTracerProvider

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from llm_stream_otel.stream.monitor import StreamMonitor
from otel_helpers import Telemetry, make_telemetry
from streaming import consume, request_kwargs

# These tests inject failures into our code on purpose: strict mode off.
pytestmark = pytest.mark.usefixtures("lenient_mode")

STREAMS = 3  # each injected failure is hit by several streams: still one WARNING


class Boom(RuntimeError):
    pass


def _key(chunk: Any) -> Any:
    return type(chunk), chunk.model_dump(exclude={"id", "created"}, warnings=False)


_PLAIN: dict = {}


def plain_view(server: Any, fault: str, endpoint: str = "chat") -> Tuple[List[Any], Optional[BaseException]]:
    """What the app sees with no instrumentation at all (recorded before any test instruments)."""
    return _PLAIN[(fault, endpoint)]


@pytest.fixture(scope="module", autouse=True)
def _record_plain_views(server: Any) -> None:
    assert not LLMStreamInstrumentor().is_instrumented_by_opentelemetry
    faults = set(FAULTS) | {"none;chunks=10", "reset_between;after=2", "cut_mid_chunk;after=2", "reset_mid_chunk;after=1"}
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for fault in faults:
            _PLAIN[(fault, "chat")] = consume(client, "chat", fault, prompt="isolation prompt")


def assert_same(view: Tuple[List[Any], Optional[BaseException]], plain: Tuple[List[Any], Optional[BaseException]]) -> None:
    chunks, exc = view
    plain_chunks, plain_exc = plain
    assert [_key(c) for c in chunks] == [_key(c) for c in plain_chunks]
    assert type(exc) is type(plain_exc) and str(exc) == str(plain_exc)


def warnings_of(our_logs: Any) -> List[logging.LogRecord]:
    return [r for r in our_logs.records if r.levelno >= logging.WARNING]


def assert_logged_once(our_logs: Any, where: str) -> None:
    warnings = warnings_of(our_logs)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"internal error in {where}" in message and "application is unaffected" in message, message
    assert warnings[0].exc_info is not None  # the traceback is there for whoever debugs it
    later = [r for r in our_logs.internal_errors() if r.levelno == logging.DEBUG]
    assert len(later) >= STREAMS - 1


@pytest.fixture
def instrument(fresh_guard: None) -> Iterator[Any]:
    """instrument(**providers) on the real instrumentor; always uninstrumented afterwards."""
    instrumentor = LLMStreamInstrumentor()

    def start(**kwargs: Any) -> LLMStreamInstrumentor:
        instrumentor.instrument(**kwargs)
        return instrumentor

    yield start
    instrumentor.uninstrument()


FAULTS = ["none", "reset_mid_chunk;after=2", "missing_terminator;after=2", "error_event;after=1", "http_500"]


@pytest.mark.parametrize("method", ["end", "fail_stream", "abandon", "fail_request"])
def test_monitor_bug_at_each_ending(server, instrument, our_logs, telemetry, monkeypatch, method):
    """Every way a stream ends goes through a monitor method: make each one raise."""
    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)

    def broken(self: Any, *args: Any) -> bool:
        raise Boom(f"bug in StreamMonitor.{method}")

    monkeypatch.setattr(StreamMonitor, method, broken)
    fault = {"end": "none", "fail_stream": "reset_between;after=2", "abandon": "none;chunks=10",
             "fail_request": "http_500"}[method]
    plain = plain_view(server, fault)
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for _ in range(STREAMS):
            if method == "abandon":
                stream = client.chat.completions.create(**request_kwargs("chat", fault, prompt="isolation prompt"))
                first = next(stream)
                stream.close()
                assert _key(first) == _key(plain[0][0])
            else:
                assert_same(consume(client, "chat", fault, prompt="isolation prompt"), plain)
    assert_logged_once(our_logs, "stream finalization")
    assert len(telemetry.stream_spans()) == STREAMS  # each span still ended, once


class RaisingInstrument:
    def record(self, *args: Any, **kwargs: Any) -> None:
        raise Boom("metric backend exploded")

    add = record


class RaisingMeter(NoOpMeter):
    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingInstrument()

    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return RaisingInstrument()


class MeterProviderOf(ApiMeterProvider):
    def __init__(self, meter: Any) -> None:
        self.meter = meter

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return self.meter


class BrokenMeterProvider(ApiMeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("broken meter provider")


class MeterWithoutInstruments(NoOpMeter):
    def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("cannot create instruments")

    create_counter = create_histogram


@pytest.mark.parametrize("fault", FAULTS)
def test_instruments_that_raise_on_record(server, instrument, our_logs, telemetry, fault):
    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=MeterProviderOf(RaisingMeter("x")))
    plain = plain_view(server, fault)
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for _ in range(STREAMS):
            assert_same(consume(client, "chat", fault, prompt="isolation prompt"), plain)
    assert_logged_once(our_logs, "metric recording")
    spans = telemetry.stream_spans()
    assert len(spans) == STREAMS
    assert all(t.OUTCOME in s.attributes for s in spans)  # the span was annotated before metrics failed


@pytest.mark.parametrize(
    "provider",
    [BrokenMeterProvider(), MeterProviderOf(MeterWithoutInstruments("x"))],
    ids=["get_meter_raises", "create_instrument_raises"],
)
def test_broken_meter_provider_at_instrument_time(server, instrument, our_logs, telemetry, provider):
    """instrument() must not raise; spans keep working without metrics."""
    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=provider)
    warnings = warnings_of(our_logs)
    assert len(warnings) == 1 and "meter" in warnings[0].getMessage().lower(), [r.getMessage() for r in warnings]
    plain = plain_view(server, "reset_mid_chunk;after=2")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        assert_same(consume(client, "chat", "reset_mid_chunk;after=2", prompt="isolation prompt"), plain)
    (span,) = telemetry.stream_spans()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert len(warnings_of(our_logs)) == 1  # nothing more per stream


class BrokenTracerProvider(ApiTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise Boom("broken tracer provider")


def test_broken_tracer_provider_at_instrument_time(server, instrument, our_logs, telemetry):
    instrument(tracer_provider=BrokenTracerProvider(), meter_provider=telemetry.meter_provider)
    warnings = warnings_of(our_logs)
    assert len(warnings) == 1 and "tracer" in warnings[0].getMessage().lower(), [r.getMessage() for r in warnings]
    plain = plain_view(server, "none")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        assert_same(consume(client, "chat", "none", prompt="isolation prompt"), plain)
    assert telemetry.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_COMPLETED) == 1


class RaisingExporter(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.calls += 1
        raise Boom("metric exporter exploded")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_metric_exporter_that_raises(server, instrument, telemetry):
    exporter = RaisingExporter()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=20)
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(tracer_provider=telemetry.tracer_provider, meter_provider=provider)
        plain = plain_view(server, "cut_mid_chunk;after=2")
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            for _ in range(STREAMS):
                assert_same(consume(client, "chat", "cut_mid_chunk;after=2", prompt="isolation prompt"), plain)
        provider.force_flush()
        assert exporter.calls >= 1
        assert len(telemetry.stream_spans()) == STREAMS
    finally:
        provider.shutdown()


class RaisingProcessor(SpanProcessor):
    def __init__(self, on: str) -> None:
        self.on = on

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.on == "start":
            raise Boom("span processor on_start exploded")

    def on_end(self, span: Any) -> None:
        if self.on == "end":
            raise Boom("span processor on_end exploded")


class RaisingSpanExporter(SpanExporter):
    def export(self, spans: Any) -> Any:
        raise Boom("span exporter exploded")


@pytest.mark.parametrize("where", ["start", "end", "exporter"])
def test_span_pipeline_that_raises(server, instrument, our_logs, where):
    telemetry = make_telemetry()
    if where == "exporter":
        telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(RaisingSpanExporter()))
    else:
        telemetry.tracer_provider.add_span_processor(RaisingProcessor(where))
    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    plain = plain_view(server, "reset_between;after=2")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for _ in range(STREAMS):
            assert_same(consume(client, "chat", "reset_between;after=2", prompt="isolation prompt"), plain)
    if where == "start":
        assert_logged_once(our_logs, "stream start")  # no span could be made: the call ran uninstrumented
    elif where == "end":
        assert_logged_once(our_logs, "stream finalization")
        assert telemetry.total(t.METRIC_OUTCOMES) == STREAMS
    else:
        assert warnings_of(our_logs) == []  # the SDK's own exporter errors are the SDK's to log
        assert len(telemetry.stream_spans()) == STREAMS


def test_retry_table_bug(server, instrument, our_logs, telemetry, monkeypatch):
    from llm_stream_otel.retries.attempts import RetryTracker

    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    monkeypatch.setattr(RetryTracker, "finish", lambda *a, **k: (_ for _ in ()).throw(Boom("retry table bug")))
    plain = plain_view(server, "reset_mid_chunk;after=1")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for _ in range(STREAMS):
            assert_same(consume(client, "chat", "reset_mid_chunk;after=1", prompt="isolation prompt"), plain)
    assert_logged_once(our_logs, "retry bookkeeping")  # its own step now (issue 11)
    assert len(telemetry.stream_spans()) == STREAMS


def test_sdk_retry_hook_bug(server, instrument, our_logs, telemetry, monkeypatch):
    """The SDK re-sends a 500 (max_retries=2): our retry counting fails, the SDK's retries don't."""
    from llm_stream_otel.stream.call import StreamCall

    instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    monkeypatch.setattr(StreamCall, "sdk_retry", lambda self, n: (_ for _ in ()).throw(Boom("sdk retry bug")))
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2) as client:
        plain_requests = len(server.requests)
        chunks, exc = consume(client, "chat", "http_500;retry_after_ms=1", prompt="isolation sdk retry")
    assert isinstance(exc, openai.InternalServerError) and chunks == []
    assert len(server.requests) - plain_requests == 3  # the SDK still retried twice
    warnings = warnings_of(our_logs)
    assert len(warnings) == 1 and "internal error in sdk retry counting" in warnings[0].getMessage()
    (span,) = telemetry.stream_spans()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_FAILED


# --------------------------------------------------------------------------- instrument lifecycle


def test_instrument_uninstrument_cycles(server, fresh_guard, our_logs):
    """20 cycles, then a stream: one span, one outcome, from the last instrumentation only."""
    instrumentor = LLMStreamInstrumentor()
    earlier: List[Telemetry] = []
    for _ in range(20):
        telemetry = make_telemetry()
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
        instrumentor.uninstrument()
        earlier.append(telemetry)
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        consume(client, "chat", "none")  # uninstrumented now: nothing anywhere
        telemetry = make_telemetry()
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
        instrumentor.instrument(tracer_provider=make_telemetry().tracer_provider)  # double: a no-op
        try:
            chunks, exc = consume(client, "chat", "reset_between;after=3")
        finally:
            instrumentor.uninstrument()
        consume(client, "chat", "none")
    assert exc is not None and len(chunks) == 3
    assert all(e.stream_spans() == [] and e.points(t.METRIC_OUTCOMES) == [] for e in earlier)
    (span,) = telemetry.stream_spans()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert telemetry.total(t.METRIC_OUTCOMES) == 1
    assert our_logs.internal_errors() == []


def test_stream_that_outlives_uninstrument(server, telemetry, fresh_guard, our_logs):
    """A stream opened while instrumented still ends its span (once) after uninstrument()."""
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        stream = client.chat.completions.create(**request_kwargs("chat", "none"))
        first = next(stream)
        instrumentor.uninstrument()
        rest = list(stream)
    assert first and rest
    (span,) = telemetry.stream_spans()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert span.attributes[t.CHUNKS] == 1 + len(rest)
    assert our_logs.internal_errors() == []


def test_noop_providers(server, instrument, our_logs):
    """With no-op providers (tracing off) the app is unaffected and nothing is logged."""
    instrument(tracer_provider=NoOpTracerProvider(), meter_provider=MeterProviderOf(NoOpMeter("x")))
    plain = plain_view(server, "reset_mid_chunk;after=2")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        assert_same(consume(client, "chat", "reset_mid_chunk;after=2", prompt="isolation prompt"), plain)
    assert warnings_of(our_logs) == []


def test_constructing_the_instrumentor_again_keeps_its_state(server, telemetry, fresh_guard):
    """``LLMStreamInstrumentor()`` is a singleton (BaseInstrumentor): a second construction
    (``LLMStreamInstrumentor().uninstrument()``, as the OTel docs write it) must not forget
    what the first one patched, or uninstrument() leaves the wrappers in place."""
    from openai.resources.chat import completions as chat

    original = vars(chat.Completions)["create"]
    LLMStreamInstrumentor().instrument(tracer_provider=telemetry.tracer_provider,
                                       meter_provider=telemetry.meter_provider)
    assert LLMStreamInstrumentor().telemetry is not None
    LLMStreamInstrumentor().uninstrument()
    assert vars(chat.Completions)["create"] is original
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        consume(client, "chat", "none")
    assert telemetry.stream_spans() == []


class DualStream:
    """A stream wrapper implementing BOTH protocols, as openai-v2's stream wrappers do."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __iter__(self) -> "DualStream":
        return self

    def __next__(self) -> Any:
        return next(self.stream)

    def __aiter__(self) -> "DualStream":
        return self

    async def __anext__(self) -> Any:
        return await self.stream.__anext__()

    def close(self) -> None:
        self.stream.close()


def test_sync_stream_of_a_dual_protocol_wrapper_is_observed(server, instrument, telemetry):
    """Under another instrumentation's wrapper, a sync stream gets the sync proxy (not the
    async one, which would let every chunk pass unobserved and end as 'abandoned')."""
    from openai.resources.chat import completions as chat
    from wrapt import wrap_function_wrapper

    original = vars(chat.Completions)["create"]
    wrap_function_wrapper(chat.Completions, "create", lambda wrapped, inst, args, kw: DualStream(wrapped(*args, **kw)))
    try:
        instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            chunks, exc = consume(client, "chat", "reset_between;after=3")
    finally:
        LLMStreamInstrumentor().uninstrument()
        chat.Completions.create = original
    assert exc is not None and len(chunks) == 3
    (span,) = telemetry.stream_spans()
    assert (span.attributes[t.OUTCOME], span.attributes[t.CHUNKS]) == (t.OUTCOME_TRUNCATED, 3)


def _suspended_http_generators() -> int:
    """Generators of the SDK / HTTP stack that are suspended mid-body (their finalizer
    runs the HTTP client's cleanup, at a time the cyclic GC chooses)."""
    import gc as _gc

    count = 0
    for obj in _gc.get_objects():
        kind = type(obj).__name__
        if kind not in ("generator", "async_generator"):
            continue
        code = obj.gi_code if kind == "generator" else obj.ag_code
        frame = obj.gi_frame if kind == "generator" else obj.ag_frame
        if code is not None and frame is not None and any(
            f"/{m}/" in code.co_filename for m in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anyio")
        ):
            count += 1
    return count


def _left_behind(client: Any, fault: str) -> int:
    before = _suspended_http_generators()
    chunks, exc = consume(client, "chat", fault)
    assert exc is not None
    del exc, chunks
    return _suspended_http_generators() - before


@pytest.mark.parametrize("fault", ["reset_mid_chunk;after=2", "cut_mid_chunk;after=2", "error_event;after=2"])
def test_a_failed_stream_leaves_nothing_to_the_cyclic_gc(server, telemetry, fault):
    """Once the app drops the stream and its exception, the SDK's suspended HTTP generators
    must be freed at once, as without us. If we kept the exception (its traceback holds our
    frames, which hold the call: a cycle), they would wait for the cyclic GC, and with openai
    1.x/2.x the GC can finalize them inside httpcore's pool lock: a deadlock
    (encode/httpcore#990)."""
    import gc as _gc

    instrumentor = LLMStreamInstrumentor()
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        _gc.collect()
        _gc.disable()
        try:
            baseline = _left_behind(client, fault)
            instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
            try:
                left = _left_behind(client, fault)
            finally:
                instrumentor.uninstrument()
        finally:
            _gc.enable()
            _gc.collect()
    assert left == baseline == 0, (left, baseline)
    assert telemetry.span().attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
