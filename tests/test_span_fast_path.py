"""The span fast path (``stream/span_fast_path.py``): a stream's summary attributes
written into the SDK span's own dict leave exactly what ``Span.set_attributes``
leaves, and the SDK's own rules (length and count limits, ended spans) still
apply, through the real openai client, the fault server and the real SDK."""

from __future__ import annotations

import gc

import openai
import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from llm_stream_otel.stream import span_fast_path
from otel_helpers import make_telemetry
from streaming import consume

# Attributes whose values differ from call to call (clock readings, the server's
# response id): compared by key and type only.
_VARYING = {
    t.GEN_AI_RESPONSE_ID,
    t.HTTP_REQUEST_ID,
    t.TIME_TO_FIRST_CHUNK,
    t.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
    t.MAX_GAP,
    t.IDLE_BEFORE_END,
    t.TIME_TO_HEADERS,
}
FAULTS = ("none", "length", "reset_between;after=2", "missing_terminator;after=2", "error_event;after=2", "stall;after=1;seconds=0.4")


def _span_attributes(server, fault: str, fast: bool, prompt: str, limits=None):
    telemetry = make_telemetry()
    if limits is not None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        telemetry.tracer_provider, telemetry.exporter = provider, exporter
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        stall_threshold=0.3,
        span_fast_path=fast,
    )
    try:
        with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as client:
            consume(client, "chat", fault, prompt=prompt)
        span = telemetry.span()
    finally:
        gc.collect()
        instrumentor.uninstrument()
    return [(key, type(value), None if key in _VARYING else value) for key, value in span.attributes.items()], span


def test_the_self_test_proves_the_fast_path_on_this_sdk():
    assert span_fast_path.proven()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_stream_span_has_the_same_attributes_through_the_fast_path(server, fault):
    """Same keys, order, types and values (varying ones by key and type) as Span.set_attributes."""
    fast, _ = _span_attributes(server, fault, True, f"fast-path {fault}")
    public, _ = _span_attributes(server, fault, False, f"fast-path {fault}")
    assert fast == public
    assert dict((k, v) for k, _, v in fast)[t.OUTCOME]  # the summary is there at all


def test_the_sdk_length_limit_still_cuts_the_summary(server):
    """A value longer than the span limit goes through the SDK, which cuts it (the fast path would not)."""
    attributes, span = _span_attributes(server, "reset_between;after=2", True, "limit", SpanLimits(max_attribute_length=5))
    assert span.attributes[t.OUTCOME] == "trunc"
    assert span.attributes[t.TRUNCATION_REASON] == "conne"


def test_the_sdk_count_limit_still_drops_the_oldest(server):
    attributes, span = _span_attributes(server, "none", True, "count", SpanLimits(max_attributes=6))
    assert len(span.attributes) == 6 and span.dropped_attributes > 0
    public, public_span = _span_attributes(server, "none", False, "count", SpanLimits(max_attributes=6))
    assert [k for k, _, _ in attributes] == [k for k, _, _ in public]
    assert span.dropped_attributes == public_span.dropped_attributes


def test_it_writes_nothing_where_the_sdk_would_refuse_or_clean():
    tracer = TracerProvider().get_tracer("test")
    classes = span_fast_path._load()
    ended = tracer.start_span("ended")
    ended.end()
    assert not span_fast_path._write(ended, {"a": "b"}, classes)
    live = tracer.start_span("live")
    for odd in ({"a": {"nested": 1}}, {"a": []}, {"a": [1, 2]}, {"": "empty key"}, {"a": None}):
        assert not span_fast_path._write(live, odd, classes), odd
    assert dict(live.attributes) == {}
    assert span_fast_path._write(live, {"a": ["x", "y"], "b": 1.5}, classes)
    assert dict(live.attributes) == {"a": ("x", "y"), "b": 1.5}


def test_a_shape_seen_plain_before_does_not_let_other_values_through():
    """The plain check remembers the (keys, value types) it accepted: the same keys with a
    value of another type (a dict, None, a list of numbers) are checked again and refused."""
    tracer = TracerProvider().get_tracer("test")
    classes = span_fast_path._load()
    plain = {"llm.stream.outcome": "completed", "llm.stream.chunks": 7, "llm.stream.max_gap": 0.25}
    for _ in range(2):  # the second time through the remembered shape
        span = tracer.start_span("plain")
        assert span_fast_path._write(span, plain, classes)
        assert dict(span.attributes) == plain
    for odd in ({"nested": 1}, None, [1, 2], [], 3 + 1j):
        span = tracer.start_span("odd")
        assert not span_fast_path._write(span, {**plain, "llm.stream.max_gap": odd}, classes), odd
        assert dict(span.attributes) == {}
    class Text(str):
        pass
    span = tracer.start_span("subclass value")
    assert not span_fast_path._write(span, {**plain, "llm.stream.outcome": Text("completed")}, classes)
