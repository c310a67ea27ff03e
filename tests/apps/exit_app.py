"""An app that leaves a stream open when the interpreter exits, one way per mode.

Telemetry goes through a real ``BatchSpanProcessor`` (and a periodic metric
reader) into exporters that write JSON lines to ``$EXIT_APP_OUT``: what is in
the file is what was exported before the providers shut down.

Usage: ``python exit_app.py MODE [instrument_first]`` with ``$BASE_URL`` set.
"""

from __future__ import annotations

import json
import os
import sys

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from llm_stream_otel import LLMStreamInstrumentor

OUT = os.environ["EXIT_APP_OUT"]
MODE = sys.argv[1]
INSTRUMENT_FIRST = "instrument_first" in sys.argv[2:]


def _write(record: dict) -> None:
    with open(OUT, "a") as out:
        out.write(json.dumps(record) + "\n")


class FileSpanExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        for span in spans:
            _write({"span": span.name, "scope": span.instrumentation_scope.name, "attributes": dict(span.attributes)})
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class FileMetricExporter(MetricExporter):
    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):  # type: ignore[no-untyped-def]
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        _write({"metric": metric.name, "attributes": dict(point.attributes)})
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:  # type: ignore[no-untyped-def]
        pass


def providers() -> tuple:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(FileSpanExporter(), schedule_delay_millis=60_000))
    reader = PeriodicExportingMetricReader(FileMetricExporter(), export_interval_millis=600_000)
    return tracer_provider, MeterProvider(metric_readers=[reader])


if INSTRUMENT_FIRST:
    # instrument() before the providers exist (global providers set later).
    from opentelemetry import metrics, trace

    LLMStreamInstrumentor().instrument()
    tracer_provider, meter_provider = providers()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
else:
    tracer_provider, meter_provider = providers()
    LLMStreamInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
if MODE == "openai_v2_outside":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-test", max_retries=0)
MESSAGES = [{"role": "user", "content": f"exit {MODE}"}]


def create():  # type: ignore[no-untyped-def]
    return client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)


def read_two(stream) -> None:  # type: ignore[no-untyped-def]
    for index, _chunk in enumerate(stream):
        if index == 1:
            break


class Session:
    """A long-lived object holding the stream it is reading."""

    instances: list = []

    def __init__(self) -> None:
        self.stream = create()
        Session.instances.append(self)


def dropped_helper_in_a_cycle() -> None:
    helper = client.chat.completions.stream(model="gpt-test", messages=MESSAGES).__enter__()
    events = iter(helper)
    next(events)
    next(events)


if MODE == "module_level":
    stream = create()
    read_two(stream)
elif MODE == "sys_exit":
    for index, chunk in enumerate(create()):
        if index == 1:
            sys.exit(0)
elif MODE == "unhandled_exception":
    for index, chunk in enumerate(create()):
        if index == 1:
            raise RuntimeError("the app failed mid-stream")
elif MODE == "long_lived_object":
    read_two(Session().stream)
elif MODE == "function_break":
    read_two(create())  # dropped when the function returns: finalised, handed off
elif MODE == "cycle_helper":
    dropped_helper_in_a_cycle()
elif MODE == "openai_v2_outside":
    with create() as stream:
        for chunk in stream:
            break
else:
    raise SystemExit(f"unknown mode {MODE}")
