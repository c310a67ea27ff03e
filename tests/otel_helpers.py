"""Real OTel SDK providers with in-memory exporters, and ways to read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel.stream import handoff
from llm_stream_otel.demo.summary import metric_points


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    instrumentor: Optional[LLMStreamInstrumentor] = None
    _metrics_cache: Any = field(default=None, repr=False)

    def spans(self) -> List[ReadableSpan]:
        # Endings that finalizers handed off run at the next stream start or end,
        # or within a second on the drainer thread; a test reads them at once.
        handoff.drain()
        return list(self.exporter.get_finished_spans())

    def span(self) -> ReadableSpan:
        spans = self.stream_spans()
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def stream_spans(self) -> List[ReadableSpan]:
        """Our per-stream spans (kind CLIENT; the resilient helper's parent is INTERNAL)."""
        return [
            s
            for s in self.spans()
            if s.instrumentation_scope.name == "llm_stream_otel" and s.kind == SpanKind.CLIENT
        ]

    def points(self, name: str) -> List[Any]:
        handoff.drain()
        return list(metric_points(self.reader.get_metrics_data(), name))

    def total(self, name: str, **match: Any) -> float:
        """Sum of a counter (or count of a histogram) over points matching attributes."""
        result = 0.0
        for point in self.points(name):
            attrs = dict(point.attributes)
            if all(attrs.get(key.replace("__", ".")) == value for key, value in match.items()):
                result += getattr(point, "value", None) if hasattr(point, "value") else point.count
        return result

    def attribute_sets(self, name: str) -> List[Dict[str, Any]]:
        return [dict(point.attributes) for point in self.points(name)]


def make_telemetry() -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    return Telemetry(exporter, reader, tracer_provider, meter_provider)
