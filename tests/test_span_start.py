"""The span start fast path (``stream/span_start.py``): a stream's span started without its
request attributes, which the span fast path writes right after, only where nothing can
see the difference: a span processor or a sampler that reads the attributes at the start
still sees all of them. Through the real openai client, the fault server and the real SDK."""

from __future__ import annotations

import gc

import openai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from llm_stream_otel.stream import span_fast_path, span_start
from otel_helpers import make_telemetry
from streaming import consume

REQUEST = {t.GEN_AI_OPERATION_NAME, t.GEN_AI_PROVIDER_NAME, t.GEN_AI_REQUEST_MODEL, t.SERVER_ADDRESS, t.SERVER_PORT}


def _stream(server, tracer_provider, fault="none"):
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=telemetry.meter_provider)
    try:
        with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as client:
            consume(client, "chat", fault, prompt="span start")
    finally:
        gc.collect()
        instrumentor.uninstrument()


class _Watching(SimpleSpanProcessor):
    """A processor of the user's that reads the attributes as the span starts."""

    def __init__(self, exporter):
        super().__init__(exporter)
        self.seen = []

    def on_start(self, span, parent_context=None):
        self.seen.append(dict(span.attributes))


class _Reading(Sampler):
    """A sampler of the user's that decides on the attributes."""

    def __init__(self):
        self.seen = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.seen.append(dict(attributes or {}))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self):
        return "reading"


def test_the_self_test_proves_it_and_the_sdk_defaults_take_it():
    span_fast_path.configure(True)  # as instrument() leaves it by default (an earlier test may have turned it off)
    assert span_start.proven()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert span_start._deferrable(provider.get_tracer("t"))


def test_a_processor_that_reads_attributes_at_start_sees_the_request(server):
    span_fast_path.configure(True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    watching = _Watching(exporter)
    provider.add_span_processor(watching)
    assert not span_start._deferrable(provider.get_tracer("t"))
    _stream(server, provider)
    assert watching.seen and REQUEST <= set(watching.seen[0])
    assert REQUEST <= set(exporter.get_finished_spans()[0].attributes)


def test_a_processor_added_later_is_noticed(server):
    """The answer is kept per tracer, but a processor added afterwards is seen at the next stream."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _stream(server, provider)
    watching = _Watching(InMemorySpanExporter())
    provider.add_span_processor(watching)
    _stream(server, provider)
    assert len(watching.seen) == 1 and REQUEST <= set(watching.seen[0])


def test_a_sampler_that_reads_attributes_sees_the_request(server):
    sampler = _Reading()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _stream(server, provider)
    assert sampler.seen and REQUEST <= set(sampler.seen[0])
    span = exporter.get_finished_spans()[0]
    assert REQUEST <= set(span.attributes) and span.attributes[t.OUTCOME]
