"""OpenTelemetry SDK wiring for the demo: in-memory for the summary, a
Prometheus endpoint, optional console spans, and OTLP when the standard
``OTEL_EXPORTER_OTLP_*`` variables ask for it."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any, List, Optional

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class PortBusyError(RuntimeError):
    pass


@dataclass
class DemoTelemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    prometheus_url: Optional[str]
    otlp: bool

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _otlp_wanted(signal: str) -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusyError(
                    f"port {port} is already in use (another demo or a Prometheus exporter?); "
                    f"pass --prometheus-port N for another port, or 0 to disable the endpoint"
                ) from None
            raise


def setup(service_name: str, prometheus_port: int, console: bool, host: str = "127.0.0.1") -> DemoTelemetry:
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    tracer_provider = TracerProvider(resource=resource)
    spans = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    if console:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    otlp = False
    readers: List[MetricReader] = []
    memory = InMemoryMetricReader()
    readers.append(memory)
    prometheus_url = None
    if prometheus_port:
        check_port_free(host, prometheus_port)
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(prometheus_port, addr=host)
        readers.append(PrometheusMetricReader())
        prometheus_url = f"http://{host}:{prometheus_port}/metrics"
    if _otlp_wanted("TRACES") or _otlp_wanted("METRICS"):
        otlp = _add_otlp(tracer_provider, readers)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource)
    return DemoTelemetry(tracer_provider, meter_provider, spans, memory, prometheus_url, otlp)


def _add_otlp(tracer_provider: TracerProvider, readers: List[Any]) -> bool:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        print("note: OTEL_EXPORTER_OTLP_* is set but opentelemetry-exporter-otlp-proto-http is not installed")
        return False
    if _otlp_wanted("TRACES"):
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if _otlp_wanted("METRICS"):
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=5000))
    return True
