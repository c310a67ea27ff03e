"""Stress app: threads finish and drop streams (some in reference cycles) under
an aggressive cyclic GC, with the metrics fast path on.

Prints ``OK <spans> <streams>`` and exits 0 when every stream's span was
exported; on a hang, faulthandler dumps every thread's stack and exits 1.
Usage: ``python gc_stress.py [budget_seconds] [rounds]``.
"""

from __future__ import annotations

import faulthandler
import gc
import sys
import threading

import openai
from opentelemetry.sdk.metrics import MeterProvider
import os

from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel.demo.fault_server import FaultServer

MESSAGES = [{"role": "user", "content": "stress"}]


def finisher(client: openai.OpenAI, rounds: int) -> None:
    """Read streams to the end: each ending merges its gaps under the SDK's locks."""
    for _ in range(rounds):
        for _chunk in client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True):
            pass


def dropper(client: openai.OpenAI, rounds: int) -> None:
    """Read a few events of a ``.stream()`` helper (a reference cycle), then drop it unclosed."""
    for _ in range(rounds):
        helper = client.chat.completions.stream(model="gpt-test", messages=MESSAGES).__enter__()
        events = iter(helper)
        for _event in range(4):
            next(events)
        del helper, events


def main() -> int:
    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    faulthandler.dump_traceback_later(budget, exit=True)
    sys.setswitchinterval(1e-5)  # interleave the threads finely: more chances for the GC to fire under a lock
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    # A periodic reader collects (allocating under the SDK's locks) on its own thread every few ms.
    devnull = open(os.devnull, "w")
    periodic = PeriodicExportingMetricReader(ConsoleMetricExporter(out=devnull), export_interval_millis=5)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader(), periodic])
    LLMStreamInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider, metrics_fast_path=True
    )
    with FaultServer(chunks=6) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=30)
        threads = [threading.Thread(target=finisher, args=(client, rounds)) for _ in range(3)]
        threads += [threading.Thread(target=dropper, args=(client, rounds)) for _ in range(3)]
        gc.set_threshold(1, 1, 1)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc.set_threshold(700, 10, 10)
        gc.collect()
        LLMStreamInstrumentor().uninstrument()  # also ends what finalizers handed off
        client.close()
    faulthandler.cancel_dump_traceback_later()
    spans = [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "llm_stream_otel"]
    print("OK" if len(spans) == 6 * rounds else "LOST", len(spans), 6 * rounds, flush=True)
    if len(spans) != 6 * rounds:
        faulthandler.dump_traceback(all_threads=True)  # a thread stuck in a finalizer shows here
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
