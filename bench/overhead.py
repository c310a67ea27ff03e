"""Overhead of llm-stream-otel against the uninstrumented stream and the other instrumentors.

    python bench/overhead.py                 # the full run (a few minutes)
    python bench/overhead.py --quick         # a smaller run (about two minutes)
    python bench/overhead.py --no-callgrind --chunks 5000 --repeats 3

What it measures (see bench/README.md for the method and the figures):

* a loopback server (``bench/server.py``, its own process) streams N chat
  chunks (default 20,000) as fast as it can; the real ``openai`` client
  iterates them, sync and async;
* configurations: uninstrumented, llm-stream-otel, the official
  ``opentelemetry-instrumentation-openai-v2``, traceloop's (OpenLLMetry)
  ``opentelemetry-instrumentation-openai``, and ours + openai-v2 together;
  all on real SDK providers (tracer, meter, logger) with no-op span/log
  exporters and an in-memory metric reader, the same for every configuration;
* wall and CPU time of whole streams, one long-lived worker process per
  configuration, interleaved round by round (repeats → median and spread;
  ratios are paired within a round);
* instruction counts under ``valgrind --tool=callgrind`` (deterministic):
  each configuration runs, in one process, a stream of 0 content chunks, a
  stream of N, and M 5-chunk streams, separated by callgrind dumps; per-chunk
  cost = (I(N) - I(0)) / N;
* per-stream fixed cost (many 5-chunk streams), memory per live stream and
  per finished stream (tracemalloc), and the hot path of proxy + monitor alone.

Results: a table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

UNINSTRUMENTED = "uninstrumented"
OURS = "llm-stream-otel"
OPENAI_V2 = "openai-v2"
OPENLLMETRY = "openllmetry"
OPENINFERENCE = "openinference"
OURS_AND_V2 = "llm-stream-otel+openai-v2"
# Allocations in these files are the HTTP/SSE transport's, the same in every configuration.
_TRANSPORT_FILES = (
    "*/h11/*",
    "*/httpcore*/*",
    "*/httpx*/*",
    "*/anyio/*",
    "*/json/*",
    "*/openai/_streaming.py",
    "*/ssl.py",
    "*/socket.py",
    "*/selectors.py",
    "*/tracemalloc.py",
)

CONFIGS: Dict[str, Tuple[str, ...]] = {
    UNINSTRUMENTED: (),
    OURS: ("ours",),
    OPENAI_V2: ("openai_v2",),
    OPENLLMETRY: ("openllmetry",),
    OPENINFERENCE: ("openinference",),
    OURS_AND_V2: ("ours", "openai_v2"),
}
# Every process loads every instrumentor package (and instruments only its own
# configuration): merely loading code shifts the interpreter's per-chunk
# instruction count by a few thousand (type/attribute-cache layout), which would
# otherwise be charged to whichever configuration loaded more. The control
# below loads nothing extra and instruments nothing (callgrind only): its
# difference to "uninstrumented" shows the size of that effect.
ALL_PACKAGES = ("import:ours", "import:openai_v2", "import:openllmetry", "import:openinference")
MINIMAL = "no extra imports (control)"
CONFIGS[MINIMAL] = ()
TIMED_CONFIGS = [c for c in CONFIGS if c != MINIMAL]
MODES = ("sync", "async")
# The short-stream phases of the callgrind run: the prompts (14 bytes and 100 KB,
# same shape) and the pace of the paced stream: real token streams' gaps are past
# the gap histogram's first bucket (10 ms), where the bucket search runs.
SHORT_PROMPT = "Say lorem ips."  # 14 bytes
LONG_PROMPT = ("lorem ipsum dolor sit amet " * 4000)[:100_000]
PACE_MS = 15.0


class _PacedClock:
    """Chunks 15 ms apart, as our proxy sees them, without waiting for them.

    Pacing on the wire is not deterministic under callgrind: how the SDK's
    reads split the body varies from run to run by tens of thousands of
    instructions per chunk, which would drown a difference of a few hundred.
    So the stream comes at full speed and the proxy's clock (its only clock
    per chunk) advances ``PACE_MS`` per chunk: every gap takes the bucket
    search a real token stream takes. The ending reads the real clock (the
    duration stays real). Other instrumentors do not read this clock.
    """

    def __enter__(self) -> None:
        import itertools

        from llm_stream_otel.stream import proxy

        self._proxy = proxy
        self._saved = proxy._perf_counter
        # From a second ahead: the first chunk comes after the stream's start, as it does for real.
        proxy._perf_counter = itertools.count(time.perf_counter() + 1.0, PACE_MS / 1000).__next__

    def __exit__(self, *exc: Any) -> None:
        self._proxy._perf_counter = self._saved

# The same environment for every configuration: content capture off everywhere
# (the default of ours and of openai-v2; OpenLLMetry's default is on).
CHILD_ENV = {
    "PYTHONHASHSEED": "0",
    "TRACELOOP_TRACE_CONTENT": "false",
}
CHILD_ENV_REMOVED = (
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    "OTEL_SEMCONV_STABILITY_OPT_IN",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
    "OTEL_INSTRUMENTATION_LLM_STREAM_METRICS_FAST_PATH",
)

class _Callgrind:
    """Callgrind client requests from Python, without a compiler or valgrind headers.

    On x86-64 the request is valgrind's "magic" no-op instruction sequence (see
    valgrind.h / callgrind.h), copied into an executable page and called through
    ctypes: natively it does nothing, under callgrind it starts instrumentation
    or dumps the counters *exactly here*. Elsewhere we fall back to
    ``--dump-before=getppid`` and ``os.getppid()`` as the dump marker (and
    instrumentation from the start, which is slower).
    """

    # gcc -O2 of: unsigned long f(unsigned long c) { return VALGRIND_DO_CLIENT_REQUEST_EXPR(0, c, 0, 0, 0, 0, 0); }
    CODE = bytes.fromhex(
        "48897c24c8488d4424c831d248c74424d00000000048c74424d80000000048c74424e00000000048c74424e8"
        "0000000048c74424f00000000048c1c70348c1c70d48c1c73d48c1c7334887db48895424c0488b4424c0c3"
    )
    DUMP_STATS = 0x43540000  # VG_USERREQ_TOOL_BASE('C','T')
    START_INSTRUMENTATION = 0x43540004

    def __init__(self) -> None:
        self._request = None
        if self.supported():
            import ctypes
            import mmap

            self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            self._page.write(self.CODE)
            address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
            self._request = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)(address)

    @staticmethod
    def supported() -> bool:
        return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")

    def start_instrumentation(self) -> None:
        if self._request is not None:
            self._request(self.START_INSTRUMENTATION)

    def dump(self) -> None:
        if self._request is not None:
            self._request(self.DUMP_STATS)
        else:
            os.getppid()


def _callgrind_flags() -> List[str]:
    if _Callgrind.supported():
        return ["--instr-atstart=no"]
    return ["--dump-before=getppid"]


# =========================================================================== worker side


def _write_queued_endings() -> None:
    """Ours queues stream endings until a reader collects (``metrics.ending_buffer``): write them
    at the end of every measured phase, so that their cost is counted where the streams are. Every
    process loads every package, so every configuration makes this call (a no-op for the others)."""
    module = sys.modules.get("llm_stream_otel.metrics.ending_buffer")
    if module is not None:
        module.flush_pending()


class _Harness:
    """One configuration in one process: providers, instrumentors, clients, streams."""

    def __init__(self, config: str, port: int) -> None:
        self.config = config
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._shim_httpx()
        self._providers()
        self.instrumentors: List[Any] = []
        if config != MINIMAL:
            self._instrument(ALL_PACKAGES)
        self._instrument(CONFIGS[config])
        import openai

        self.client = openai.OpenAI(base_url=self.base_url, api_key="sk-bench", max_retries=0)
        self.aclient = openai.AsyncOpenAI(base_url=self.base_url, api_key="sk-bench", max_retries=0)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.streams_done = 0
        self.gaps_done = 0

    @staticmethod
    def _shim_httpx() -> None:
        # openai >= 2 ships on ``httpx2``; openai-v2 2.4b0 still does ``from httpx import URL``
        # (only for an isinstance check on the base URL).
        try:
            import httpx  # noqa: F401
        except ImportError:
            try:
                import httpx2

                sys.modules["httpx"] = httpx2
            except ImportError:
                pass

    def _providers(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class CountingSpanExporter(SpanExporter):
            def __init__(self) -> None:
                self.count = 0

            def export(self, spans: Any) -> Any:
                self.count += len(spans)
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                pass

        self.span_exporter = CountingSpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)
        self.logger_provider = None
        self.log_exporter = None
        try:
            from opentelemetry._logs import set_logger_provider
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor

            class CountingLogExporter(LogRecordExporter):
                def __init__(self) -> None:
                    self.count = 0

                def export(self, batch: Any) -> Any:
                    self.count += len(batch)
                    from opentelemetry.sdk._logs.export import LogRecordExportResult

                    return LogRecordExportResult.SUCCESS

                def shutdown(self) -> None:
                    pass

            self.log_exporter = CountingLogExporter()
            self.logger_provider = LoggerProvider()
            self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))
            set_logger_provider(self.logger_provider)
        except Exception:  # noqa: BLE001 - an SDK without the logs API: spans and metrics only
            pass

    @staticmethod
    def _instrumentor_class(name: str) -> Any:
        if name == "ours":
            from llm_stream_otel import LLMStreamInstrumentor

            return LLMStreamInstrumentor
        if name == "openai_v2":
            from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

            return OpenAIInstrumentor
        if name == "openllmetry":
            from opentelemetry.instrumentation.openai import OpenAIInstrumentor as TraceloopInstrumentor

            return TraceloopInstrumentor
        if name == "openinference":
            from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInferenceInstrumentor

            return OpenInferenceInstrumentor
        raise ValueError(name)  # pragma: no cover

    def _instrument(self, names: Tuple[str, ...]) -> None:
        kwargs = {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}
        if self.logger_provider is not None:
            kwargs["logger_provider"] = self.logger_provider
        for name in names:
            if name.startswith("import:"):  # load the package, instrument nothing
                try:
                    self._instrumentor_class(name.split(":", 1)[1])
                except ImportError:
                    pass  # not installed: its configurations are skipped too
                continue
            instrumentor = self._instrumentor_class(name)()
            instrumentor.instrument(**kwargs)
            self.instrumentors.append(instrumentor)

    def switch(self, config: str) -> None:
        """Uninstrument whatever is on, then instrument ``config`` (same-process A/B runs)."""
        for instrumentor in reversed(self.instrumentors):
            instrumentor.uninstrument()
        self.instrumentors = []
        self._instrument(CONFIGS[config])

    # --- streams ----------------------------------------------------------------
    def _kwargs(self, chunks: int, prompt: str = SHORT_PROMPT, stream: bool = True) -> dict:
        kwargs = {
            "model": "gpt-bench",
            "messages": [{"role": "user", "content": prompt}],
            "extra_headers": {"x-bench-chunks": str(chunks)},
        }
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def sync_stream(self, kwargs: dict) -> int:
        received = 0
        for _ in self.client.chat.completions.create(**kwargs):
            received += 1
        self.streams_done += 1
        self.gaps_done += received - 1
        return received

    async def async_stream(self, kwargs: dict) -> int:
        received = 0
        async for _ in await self.aclient.chat.completions.create(**kwargs):
            received += 1
        self.streams_done += 1
        self.gaps_done += received - 1
        return received

    def run(self, mode: str, chunks: int, streams: int = 1, paced: bool = False, **request: Any) -> int:
        """``streams`` calls of ``chunks`` chunks (``request``: prompt, stream=False; paced: see _PacedClock)."""
        if paced:
            with _PacedClock():
                return self.run(mode, chunks, streams, **request)
        kwargs = self._kwargs(chunks, **request)
        try:
            if not kwargs.get("stream"):
                return self._run_plain(mode, kwargs, streams)
            if mode == "sync":
                return sum(self.sync_stream(kwargs) for _ in range(streams))

            async def many() -> int:
                total = 0
                for _ in range(streams):
                    total += await self.async_stream(kwargs)
                return total

            return self.loop.run_until_complete(many())
        finally:
            _write_queued_endings()

    def _run_plain(self, mode: str, kwargs: dict, calls: int) -> int:
        """Non-streaming calls (instrumentors that trace them pay their whole cost here)."""
        if mode == "sync":
            for _ in range(calls):
                self.client.chat.completions.create(**kwargs)
            return calls

        async def many() -> int:
            for _ in range(calls):
                await self.aclient.chat.completions.create(**kwargs)
            return calls

        return self.loop.run_until_complete(many())

    def warm_up(self) -> None:
        for mode in MODES:
            self.run(mode, 100, 2)
            self.run(mode, 5, 3)
            self.run(mode, 1, 2)
            self.run(mode, 5, 2, prompt=LONG_PROMPT)
            self.run(mode, 0, 2, stream=False)
            self.run(mode, 3, 1, paced=True)
            self.run(mode, 0, 1)

    def close(self) -> None:
        # Let pending async-generator finalizers run (openllmetry leaves some behind).
        try:
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.aclient.close())
            self.loop.close()
        except Exception:  # noqa: BLE001
            pass
        self.client.close()

    # --- commands -----------------------------------------------------------------
    def timed(self, mode: str, chunks: int, streams: int) -> Dict[str, Any]:
        gc.collect()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        received = self.run(mode, chunks, streams)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return {"wall": wall, "cpu": cpu, "received": received}

    def memory(self, streams: int, first: int, second: int, finished: int) -> Dict[str, Any]:
        """tracemalloc: bytes per live stream after ``first`` and ``second`` chunks, and kept per finished stream.

        Two views: all traced memory, and memory outside the HTTP/SSE transport
        (h11/httpcore/httpx read buffers and the SDK's SSE decoder hold up to
        ~64 KiB per connection, depending on where the last read stopped: the
        same for every configuration, but noisy enough to swamp the difference).
        """
        import tracemalloc

        def traced() -> Tuple[int, int]:
            snapshot = tracemalloc.take_snapshot()
            total = sum(stat.size for stat in snapshot.statistics("filename"))
            kept = snapshot.filter_traces([tracemalloc.Filter(False, pattern) for pattern in _TRANSPORT_FILES])
            return total, sum(stat.size for stat in kept.statistics("filename"))

        chunks = second + 50
        # Every path once before measuring (first attribute sets, caches, lazy imports).
        for _ in range(2):
            stream = self.client.chat.completions.create(**self._kwargs(chunks))
            for _, _chunk in zip(range(first), stream):
                pass
            stream.close()
            del stream
        self.run("sync", 5, 3)
        gc.collect()
        tracemalloc.start()
        try:
            gc.collect()
            base = traced()
            live = [self.client.chat.completions.create(**self._kwargs(chunks)) for _ in range(streams)]
            for stream in live:
                for _ in range(first):
                    next(stream)
            gc.collect()
            at_first = traced()
            for stream in live:
                for _ in range(second - first):
                    next(stream)
            gc.collect()
            at_second = traced()
            for stream in live:
                stream.close()
            del live, stream
            gc.collect()
            after_close = traced()

            gc.collect()
            base_finished = traced()
            self.run("sync", 5, finished)
            gc.collect()
            after_finished = traced()
        finally:
            tracemalloc.stop()
        out: Dict[str, Any] = {"streams": streams, "first": first, "second": second, "finished": finished}
        for view, i in (("all", 0), ("", 1)):
            prefix = "all_" if view else ""
            out[prefix + "live_bytes_at_first"] = (at_first[i] - base[i]) / streams
            out[prefix + "live_bytes_at_second"] = (at_second[i] - base[i]) / streams
            out[prefix + "bytes_after_close"] = (after_close[i] - base[i]) / streams
            out[prefix + "kept_per_finished_stream"] = (after_finished[i] - base_finished[i]) / finished
        return out

    def telemetry(self) -> Dict[str, Any]:
        """What the configuration emitted (a sanity check that it really instrumented)."""
        summary: Dict[str, Any] = {
            "spans": self.span_exporter.count,
            "log_records": getattr(self.log_exporter, "count", 0),
            "streams": self.streams_done,
            "gaps": self.gaps_done,
            "metrics": {},
        }
        data = self.metric_reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    key = f"{scope_metrics.scope.name}:{metric.name}"
                    points = metric.data.data_points
                    count = sum(getattr(p, "count", 0) or 0 for p in points)
                    value = sum(getattr(p, "value", 0) or 0 for p in points)
                    summary["metrics"][key] = count if count else value
        return summary


def worker_main(config: str, port: int) -> int:
    """Serve commands (JSON lines on stdin) for one configuration."""
    harness = _Harness(config, port)
    harness.warm_up()
    out = sys.stdout
    out.write(json.dumps({"ready": config}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            harness.close()
            break
        if op == "timed":
            result = harness.timed(cmd["mode"], cmd["chunks"], cmd.get("streams", 1))
        elif op == "memory":
            result = harness.memory(cmd["streams"], cmd["first"], cmd["second"], cmd["finished"])
        elif op == "telemetry":
            result = harness.telemetry()
        elif op == "profile":
            result = _profile(harness, cmd["mode"], cmd["chunks"], cmd["path"])
        else:
            result = {"error": f"unknown op {op}"}
        out.write(json.dumps(result) + "\n")
        out.flush()
    return 0


def _profile(harness: _Harness, mode: str, chunks: int, path: str) -> Dict[str, Any]:
    """pyinstrument text profiles: one ``chunks``-chunk stream, then 200 5-chunk streams."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"error": "pyinstrument is not installed"}
    out = []
    for label, n, count in ((f"one {chunks}-chunk stream", chunks, 1), ("200 5-chunk streams", 5, 200)):
        profiler = Profiler(interval=0.0001)
        profiler.start()
        harness.run(mode, n, count)
        profiler.stop()
        out.append(f"===== {harness.config}, {mode}: {label} =====\n")
        out.append(profiler.output_text(unicode=False, color=False, show_all=False))
    with open(path, "w") as fh:
        fh.write("\n".join(out))
    return {"path": path}


def _measured_phases(cg: "_Callgrind", phases: List[Any]) -> None:
    """Dump before and after each phase; explicit collections land in parts of their own."""
    for phase in phases:
        gc.collect()
        cg.dump()
        phase()
        cg.dump()


def callgrind_phases(chunks: int, streams: int) -> List[Tuple[str, int, int, Dict[str, Any]]]:
    """(name, chunks, calls, request options) of each measured phase, per mode, in order."""
    return [
        ("zero", 0, 1, {}),
        ("stream", chunks, 1, {}),
        ("5-chunk", 5, streams, {}),
        ("1-chunk", 1, streams, {}),
        ("5-chunk, 100 KB prompt", 5, streams, {"prompt": LONG_PROMPT}),
        ("non-streaming", 0, streams, {"stream": False}),
        ("paced", chunks, 1, {"paced": True}),
    ]


def callgrind_child_main(config: str, port: int, chunks: int, streams: int) -> int:
    """Run under callgrind: start-up and warm-up uninstrumented, then measured phases between dumps."""
    cg = _Callgrind()
    harness = _Harness(config, port)
    harness.warm_up()
    cg.start_instrumentation()
    harness.run("sync", 5, 1)
    harness.run("async", 5, 1)
    phases = []
    for mode in MODES:
        for _name, n, count, request in callgrind_phases(chunks, streams):
            phases.append(lambda mode=mode, n=n, count=count, request=request: harness.run(mode, n, count, **request))
    _measured_phases(cg, phases)
    harness.close()
    return 0


def _ab_order(configs: List[str]) -> List[str]:
    """Uninstrumented first and again after the others (uninstrument() must leave nothing behind);
    openllmetry last: its uninstrument() leaves its stream wrapper in place."""
    middle = [c for c in configs if c not in (UNINSTRUMENTED, OPENLLMETRY)]
    tail = [OPENLLMETRY] if OPENLLMETRY in configs else []
    return [UNINSTRUMENTED] + middle + [UNINSTRUMENTED] + tail


def callgrind_ab_child_main(configs: List[str], port: int, chunks: int) -> int:
    """Same-process A/B under callgrind: every package loaded up front, then for each
    configuration in turn: instrument + warm up (one phase), then a 0-chunk and an
    N-chunk stream per mode (four phases)."""
    cg = _Callgrind()
    harness = _Harness(UNINSTRUMENTED, port)
    harness.warm_up()
    cg.start_instrumentation()
    phases = []
    for config in _ab_order(configs):

        def switch(config: str = config) -> None:
            harness.switch(config)
            harness.warm_up()

        phases.append(switch)
        for mode in MODES:
            for n, paced in ((0, False), (chunks, False), (chunks, True)):
                phases.append(lambda mode=mode, n=n, paced=paced: harness.run(mode, n, 1, paced=paced))
    _measured_phases(cg, phases)
    harness.close()
    return 0


# =========================================================================== hot path alone


def _chat_chunks(n: int) -> List[Any]:
    from openai.types.chat import ChatCompletionChunk

    payload = {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-bench",
        "system_fingerprint": "fp_bench",
        "service_tier": "default",
        "choices": [{"index": 0, "delta": {"content": "lorem "}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    # A small pool, reused: a chunk the SDK has just built is hot in the CPU caches,
    # 20,000 distinct prebuilt objects would not be.
    pool = [ChatCompletionChunk.model_validate(payload) for _ in range(16)]
    return [pool[i % len(pool)] for i in range(n)]


class _Source:
    """A stand-in for openai.Stream: ``__next__`` over prebuilt chunk objects."""

    def __init__(self, chunks: List[Any]) -> None:
        self._iterator = iter(chunks)

    def __next__(self) -> Any:
        return self._iterator.__next__()

    def __iter__(self) -> Any:
        for item in self._iterator:
            yield item


class _ASource:
    def __init__(self, chunks: List[Any]) -> None:
        self._iterator = iter(chunks)

    async def __anext__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aiter__(self) -> Any:
        for item in self._iterator:
            yield item


class _StubCall:
    """Just enough of StreamCall for the proxy: the monitor and the endings."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def stream_ended(self) -> None:
        self.monitor.end(time.perf_counter())

    def stream_failed(self, exc: BaseException) -> None:
        self.monitor.fail_stream(time.perf_counter(), exc)

    def abandoned(self) -> None:
        self.monitor.abandon(time.perf_counter())


def _micro_cases(chunks: List[Any]) -> Dict[str, Any]:
    from llm_stream_otel import semconv as t
    from llm_stream_otel.providers.openai.chunks import read_choices_chunk
    from llm_stream_otel.stream.monitor import StreamMonitor
    from llm_stream_otel.stream.proxy import AsyncStreamProxy, SyncStreamProxy

    def monitor() -> Any:
        return StreamMonitor(time.perf_counter(), 5.0, t.SECONDS_BUCKETS, read_choices_chunk)

    def sync_bare() -> None:
        for _ in _Source(chunks):
            pass

    def sync_proxied() -> None:
        for _ in SyncStreamProxy(_Source(chunks), _StubCall(monitor())):
            pass

    def sync_next_bare() -> None:
        source = _Source(chunks)
        for _ in range(len(chunks)):
            next(source)

    def sync_next_proxied() -> None:
        source = SyncStreamProxy(_Source(chunks), _StubCall(monitor()))
        for _ in range(len(chunks)):
            next(source)

    async def _abare() -> None:
        async for _ in _ASource(chunks):
            pass

    async def _aproxied() -> None:
        async for _ in AsyncStreamProxy(_ASource(chunks), _StubCall(monitor())):
            pass

    loop = asyncio.new_event_loop()

    def async_bare() -> None:
        loop.run_until_complete(_abare())

    def async_proxied() -> None:
        loop.run_until_complete(_aproxied())

    return {
        "sync for": (sync_bare, sync_proxied),
        "sync next()": (sync_next_bare, sync_next_proxied),
        "async for": (async_bare, async_proxied),
    }


def micro_main(chunks: int, repeats: int) -> Dict[str, Any]:
    """Time the proxy + monitor alone over prebuilt chunk objects (no network, no SDK parsing)."""
    objects = _chat_chunks(chunks)
    results: Dict[str, Any] = {"chunks": chunks}
    for name, (bare, proxied) in _micro_cases(objects).items():
        samples = {"bare": [], "proxied": []}
        for _ in range(repeats):
            for label, fn in (("bare", bare), ("proxied", proxied)):
                gc.collect()
                start = time.perf_counter()
                fn()
                samples[label].append(time.perf_counter() - start)
        best = {label: min(values) for label, values in samples.items()}
        results[name] = {
            "bare_ns_per_chunk": best["bare"] / chunks * 1e9,
            "proxied_ns_per_chunk": best["proxied"] / chunks * 1e9,
            "overhead_ns_per_chunk": (best["proxied"] - best["bare"]) / chunks * 1e9,
        }
    results["gap_histogram_handover"] = _handover(chunks, repeats)
    return results


def _handover(chunks: int, repeats: int) -> Dict[str, Any]:
    """End-of-stream cost of recording a stream's gaps: SDK merge vs one record() per gap."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from llm_stream_otel import semconv as t
    from llm_stream_otel.metrics.instruments import Instruments
    from llm_stream_otel.stream.monitor import StreamMonitor

    attrs = {
        t.GEN_AI_OPERATION_NAME: "chat",
        t.GEN_AI_PROVIDER_NAME: "openai",
        t.GEN_AI_REQUEST_MODEL: "gpt-bench",
        t.SERVER_ADDRESS: "127.0.0.1",
        t.SERVER_PORT: 8000,
        t.GEN_AI_RESPONSE_MODEL: "gpt-bench",
    }
    monitor = StreamMonitor(0.0, 5.0)
    now = 0.0
    for i in range(chunks):
        now += 0.00008 if i % 100 else 0.03
        monitor.chunk(now, None)
    out: Dict[str, Any] = {"gaps": chunks - 1}
    for label, fast in (("sdk_merge", True), ("record_per_gap", False)):
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
        instruments = Instruments(provider.get_meter("bench"), metrics_fast_path=fast)
        best = float("inf")
        path = ""
        for _ in range(max(1, repeats if fast else 1)):
            start = time.perf_counter()
            path = instruments.gaps.record_gaps(monitor, attrs)
            best = min(best, time.perf_counter() - start)
        out[label] = {"path": path, "us_per_stream": best * 1e6, "ns_per_chunk": best / chunks * 1e9}
        provider.shutdown()
    return out


def micro_callgrind_child_main(chunks: int) -> int:
    cg = _Callgrind()
    objects = _chat_chunks(chunks)
    cases = _micro_cases(objects)
    for bare, proxied in cases.values():  # warm-up
        bare()
        proxied()
    cg.start_instrumentation()
    _measured_phases(cg, [fn for pair in cases.values() for fn in pair])
    return 0


# =========================================================================== coordinator side


class Server:
    def __init__(self, prebuild: List[int]) -> None:
        args = [sys.executable, os.path.join(HERE, "server.py")]
        for n in sorted(set(prebuild)):
            args += ["--prebuild", str(n)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"bench server did not start: {line!r}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def _child_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_REMOVED}
    env.update(CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(ROOT, "src"), env.get("PYTHONPATH")]))
    return env


class Worker:
    def __init__(self, config: str, port: int) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", config, "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"worker {config} died during start-up")
        assert json.loads(ready) == {"ready": config}, ready

    def ask(self, **cmd: Any) -> Dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.config} died")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask(op="quit")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _stats(values: List[float]) -> Dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def run_timings(workers: Dict[str, Worker], args: argparse.Namespace, log: Any) -> Dict[str, Any]:
    """Interleaved rounds: every configuration, both modes, once per round, in rotating order."""
    configs = list(workers)
    raw: Dict[str, Dict[str, Dict[str, List[Dict[str, float]]]]] = {
        kind: {mode: {c: [] for c in configs} for mode in args.modes} for kind in ("stream", "small")
    }
    for round_ in range(args.repeats):
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for mode in args.modes:
            for config in order:
                raw["stream"][mode][config].append(workers[config].ask(op="timed", mode=mode, chunks=args.chunks))
            for config in order:
                raw["small"][mode][config].append(
                    workers[config].ask(op="timed", mode=mode, chunks=args.fixed_chunks, streams=args.fixed_streams)
                )
        log(f"  round {round_ + 1}/{args.repeats} done")
    out: Dict[str, Any] = {"raw": raw, "summary": {}}
    for mode in args.modes:
        summary: Dict[str, Any] = {}
        base_stream = raw["stream"][mode][UNINSTRUMENTED]
        base_small = raw["small"][mode][UNINSTRUMENTED]
        for config in configs:
            entry: Dict[str, Any] = {}
            for clock in ("wall", "cpu"):
                runs = raw["stream"][mode][config]
                small = raw["small"][mode][config]
                entry[f"{clock}_s"] = _stats([r[clock] for r in runs])
                entry[f"{clock}_ratio"] = _stats([r[clock] / b[clock] for r, b in zip(runs, base_stream)])
                entry[f"{clock}_ns_per_chunk_overhead"] = _stats(
                    [(r[clock] - b[clock]) / args.chunks * 1e9 for r, b in zip(runs, base_stream)]
                )
                entry[f"{clock}_us_per_small_stream"] = _stats([s[clock] / args.fixed_streams * 1e6 for s in small])
                entry[f"{clock}_us_per_stream_overhead"] = _stats(
                    [(s[clock] - b[clock]) / args.fixed_streams * 1e6 for s, b in zip(small, base_small)]
                )
            # Load on a shared machine only ever adds time: the fastest round of each
            # configuration is the least disturbed estimate.
            best = min(r["cpu"] for r in raw["stream"][mode][config])
            best_base = min(b["cpu"] for b in base_stream)
            entry["cpu_ratio_of_minima"] = best / best_base
            entry["cpu_ns_per_chunk_overhead_of_minima"] = (best - best_base) / args.chunks * 1e9
            best_small = min(x["cpu"] for x in raw["small"][mode][config])
            best_small_base = min(b["cpu"] for b in base_small)
            entry["cpu_us_per_stream_overhead_of_minima"] = (best_small - best_small_base) / args.fixed_streams * 1e6
            summary[config] = entry
        out["summary"][mode] = summary
    return out


def run_memory(workers: Dict[str, Worker], args: argparse.Namespace) -> Dict[str, Any]:
    memory = {
        config: worker.ask(
            op="memory", streams=args.memory_streams, first=10, second=args.memory_chunks, finished=args.memory_finished
        )
        for config, worker in workers.items()
    }
    base = memory.get(UNINSTRUMENTED)
    if base:
        for config, entry in memory.items():
            for key in ("live_bytes_at_first", "live_bytes_at_second", "bytes_after_close", "kept_per_finished_stream"):
                for prefix in ("", "all_"):
                    entry[prefix + key + "_overhead"] = entry[prefix + key] - base[prefix + key]
            entry["growth_per_chunk_overhead"] = (
                entry["live_bytes_at_second_overhead"] - entry["live_bytes_at_first_overhead"]
            ) / (entry["second"] - entry["first"])
    return memory


def _callgrind_parts(prefix: str) -> List[int]:
    parts = []
    for path in sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as fh:
            for line in fh:
                if line.startswith("summary:") or line.startswith("totals:"):
                    parts.append(int(line.split()[1]))
                    break
    return parts


def run_callgrind(configs: List[str], port: int, args: argparse.Namespace, log: Any) -> Dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if not valgrind:
        log("  valgrind not found: skipping instruction counts")
        return {"skipped": "valgrind not found"}
    tmp = tempfile.mkdtemp(prefix="bench-callgrind-")
    jobs: List[Tuple[str, List[str], str]] = []
    base = [valgrind, "--tool=callgrind", "--collect-systime=no"] + _callgrind_flags()
    for config in configs:
        prefix = os.path.join(tmp, config.replace("+", "_"))
        cmd = base + [f"--callgrind-out-file={prefix}", sys.executable, __file__, "--callgrind-child", config,
                      "--port", str(port), "--chunks", str(args.callgrind_chunks),
                      "--fixed-streams", str(args.callgrind_streams)]
        jobs.append((config, cmd, prefix))
    control = os.path.join(tmp, "control")
    jobs.append((MINIMAL, base + [f"--callgrind-out-file={control}", sys.executable, __file__, "--callgrind-child",
                                       MINIMAL, "--port", str(port), "--chunks", str(args.callgrind_chunks),
                                       "--fixed-streams", str(args.callgrind_streams)], control))
    if not args.no_ab:
        prefix = os.path.join(tmp, "ab")
        cmd = base + [f"--callgrind-out-file={prefix}", sys.executable, __file__, "--callgrind-ab-child",
                      ",".join(configs), "--port", str(port), "--chunks", str(args.callgrind_chunks)]
        jobs.insert(0, ("ab", cmd, prefix))  # the longest: start it first
    if not args.no_micro:
        prefix = os.path.join(tmp, "micro")
        cmd = base + [f"--callgrind-out-file={prefix}", sys.executable, __file__, "--micro-callgrind-child",
                      "--chunks", str(args.callgrind_chunks)]
        jobs.append(("micro", cmd, prefix))
    results: Dict[str, Any] = {}
    running: List[Tuple[str, subprocess.Popen, str, float]] = []
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < args.callgrind_jobs:
            config, cmd, prefix = pending.pop(0)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_child_env())
            running.append((config, proc, prefix, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            config, proc, prefix, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            stderr = proc.stderr.read()
            parts = _callgrind_parts(prefix)
            if proc.returncode != 0:
                results[config] = {"error": f"exit {proc.returncode}", "stderr": stderr[-2000:]}
            else:
                results[config] = {"parts": parts, "seconds": time.perf_counter() - started}
            log(f"  callgrind {config}: {time.perf_counter() - started:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    return _callgrind_summary(results, args)


def _measured(parts: List[int]) -> List[int]:
    """Parts = [warm-up + gc, phase 1, gc, phase 2, gc, ...]: keep the phases."""
    return parts[1::2]


_PER_CALL_KEYS = (
    "instr_per_small_stream",
    "instr_per_1_chunk_stream",
    "instr_per_long_prompt_stream",
    "instr_per_plain_call",
)


def _callgrind_summary(results: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    n = args.callgrind_chunks
    m = args.callgrind_streams
    summary: Dict[str, Any] = {"chunks": n, "small_streams": m, "pace_ms": PACE_MS, "raw": results, "modes": {}}
    for mode_index, mode in enumerate(MODES):
        per_mode: Dict[str, Any] = {}
        for config, entry in results.items():
            if config in ("micro", "ab") or "parts" not in entry:
                continue
            phases = _measured(entry["parts"])
            names = callgrind_phases(n, m)
            k = len(names)
            if len(phases) < k * len(MODES):
                per_mode[config] = {"error": f"expected {k * len(MODES)} phases, got {len(phases)}"}
                continue
            got = dict(zip((name for name, *_ in names), phases[mode_index * k : mode_index * k + k]))
            zero = got["zero"]
            per_mode[config] = {
                "instr_zero_stream": zero,
                "instr_stream": got["stream"],
                "instr_per_chunk": (got["stream"] - zero) / n,
                "instr_per_paced_chunk": (got["paced"] - zero) / n,
                "instr_per_small_stream": got["5-chunk"] / m,
                "instr_per_1_chunk_stream": got["1-chunk"] / m,
                "instr_per_long_prompt_stream": got["5-chunk, 100 KB prompt"] / m,
                "instr_per_plain_call": got["non-streaming"] / m,
            }
        base = per_mode.get(UNINSTRUMENTED)
        if base and "instr_per_chunk" in base:
            for config, entry in per_mode.items():
                if "instr_per_chunk" not in entry:
                    continue
                entry["instr_per_chunk_overhead"] = entry["instr_per_chunk"] - base["instr_per_chunk"]
                entry["instr_ratio"] = entry["instr_per_chunk"] / base["instr_per_chunk"]
                for key in _PER_CALL_KEYS + ("instr_per_paced_chunk",):
                    entry[key + "_overhead"] = entry[key] - base[key]
                    entry[key + "_ratio"] = entry[key] / base[key]
        summary["modes"][mode] = per_mode
    ab = results.get("ab")
    if ab and "parts" in ab:
        summary["ab"] = _ab_summary(_measured(ab["parts"]), args)
    micro = results.get("micro")
    if micro and "parts" in micro and len(_measured(micro["parts"])) >= 6:
        phases = _measured(micro["parts"])
        names = ["sync for", "sync next()", "async for"]
        summary["micro"] = {
            name: {
                "bare_instr_per_chunk": phases[2 * i] / n,
                "proxied_instr_per_chunk": phases[2 * i + 1] / n,
                "overhead_instr_per_chunk": (phases[2 * i + 1] - phases[2 * i]) / n,
            }
            for i, name in enumerate(names)
        }
    return summary


def _ab_summary(phases: List[int], args: argparse.Namespace) -> Dict[str, Any]:
    """Per configuration: [switch, sync 0, sync N, sync N paced, async 0, ...] (see callgrind_ab_child_main)."""
    n = args.callgrind_chunks
    order = _ab_order(args.configs)
    order[order.index(UNINSTRUMENTED, 1)] = UNINSTRUMENTED + " (again)"
    out: Dict[str, Any] = {}
    size = 1 + 3 * len(MODES)
    for i, config in enumerate(order):
        block = phases[size * i : size * i + size]
        if len(block) < size:
            return {"error": f"expected {size * len(order)} phases, got {len(phases)}"}
        out[config] = {
            mode: {
                "instr_per_chunk": (block[2 + 3 * k] - block[1 + 3 * k]) / n,
                "instr_per_paced_chunk": (block[3 + 3 * k] - block[1 + 3 * k]) / n,
            }
            for k, mode in enumerate(MODES)
        }
    base = out[UNINSTRUMENTED]
    for config, entry in out.items():
        for mode in MODES:
            e, b = entry[mode], base[mode]
            e["instr_per_chunk_overhead"] = e["instr_per_chunk"] - b["instr_per_chunk"]
            e["instr_ratio"] = e["instr_per_chunk"] / b["instr_per_chunk"]
            e["instr_per_paced_chunk_overhead"] = e["instr_per_paced_chunk"] - b["instr_per_paced_chunk"]
    return out


def _ns_from_instr(timings: Dict[str, Any], ab_entry: Dict[str, Any], mode: str) -> Optional[float]:
    """Instruction overhead converted at the uninstrumented timed run's ns per instruction."""
    try:
        base_ns = timings["summary"][mode][UNINSTRUMENTED]["cpu_s"]["min"] / timings["chunks"] * 1e9
        base_instr = timings["_base_instr_per_chunk"][mode]
        return ab_entry["instr_per_chunk_overhead"] * base_ns / base_instr
    except (KeyError, TypeError, ZeroDivisionError):
        return None


# =========================================================================== report


def _fmt(value: Optional[float], spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _millions(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


def render_short_streams(result: Dict[str, Any]) -> List[str]:
    """Per-call costs (callgrind, one process per configuration, minus uninstrumented)."""
    callgrind = result.get("callgrind") or {}
    modes = callgrind.get("modes") or {}
    if not modes:
        return []
    lines = [
        "",
        f"[short streams and per-call costs: callgrind, extra instructions per call minus uninstrumented, "
        f"{callgrind.get('small_streams')} calls each; paced chunk: {callgrind.get('chunks')} chunks "
        f"{callgrind.get('pace_ms'):.0f} ms apart to our proxy's clock]",
    ]
    header = (
        f"{'mode':5s} {'configuration':28s} {'1-chunk':>16s} {'5-chunk':>16s} {'5-chunk 100 KB':>16s} "
        f"{'100KB/14B':>9s} {'non-stream':>10s} {'paced chunk':>11s} {'A/B chunk':>9s} {'A/B paced':>9s}"
    )
    ab = callgrind.get("ab") if isinstance(callgrind.get("ab"), dict) else {}
    lines.append(header)
    lines.append("-" * len(header))
    for mode, per_mode in modes.items():
        base = per_mode.get(UNINSTRUMENTED) or {}
        lines.append(
            f"{mode:5s} {'(SDK alone)':28s} {_millions(base.get('instr_per_1_chunk_stream')):>16s} "
            f"{_millions(base.get('instr_per_small_stream')):>16s} "
            f"{_millions(base.get('instr_per_long_prompt_stream')):>16s} {'':>9s} "
            f"{_millions(base.get('instr_per_plain_call')):>10s} {_fmt(base.get('instr_per_paced_chunk')):>11s}"
        )
        if not isinstance(ab, dict):
            ab = {}
        for config in list(result["configs"]) + [MINIMAL]:
            e = per_mode.get(config)
            if config == UNINSTRUMENTED or not e or "instr_per_small_stream_overhead" not in e:
                continue

            def cell(key: str) -> str:
                return f"{_millions(e[key + '_overhead'])} (x{e[key + '_ratio']:.3f})"

            small, long_ = e["instr_per_small_stream_overhead"], e["instr_per_long_prompt_stream_overhead"]
            size = f"{long_ / small:.3f}" if small > 0 else "-"
            lines.append(
                f"{'':5s} {config:28s} {cell('instr_per_1_chunk_stream'):>16s} {cell('instr_per_small_stream'):>16s} "
                f"{cell('instr_per_long_prompt_stream'):>16s} {size:>9s} "
                f"{_millions(e['instr_per_plain_call_overhead']):>10s} "
                f"{_fmt(e['instr_per_paced_chunk_overhead']):>11s} "
                f"{_fmt(((ab.get(config) or {}).get(mode) or {}).get('instr_per_chunk_overhead')):>9s} "
                f"{_fmt(((ab.get(config) or {}).get(mode) or {}).get('instr_per_paced_chunk_overhead')):>9s}"
            )
    lines.append(
        "  100KB/14B = extra instructions of the 5-chunk stream with a 100 KB prompt / with a 14-byte prompt;"
        " paced chunk = (I(paced stream) - I(0-chunk stream)) / chunks, minus uninstrumented; A/B = the same per chunk"
        " (paced and not), every configuration in turn in one process"
    )
    return lines


def render(result: Dict[str, Any]) -> str:
    lines = []
    args = result["args"]
    timings = result.get("timings")
    callgrind = result.get("callgrind") or {}
    memory = result.get("memory") or {}
    lines.append(
        f"llm-stream-otel overhead: {args['chunks']} chunks/stream, {args['repeats']} interleaved rounds, "
        f"callgrind {callgrind.get('chunks', '-')} chunks"
    )
    ab = callgrind.get("ab") or {}
    for mode in args["modes"]:
        lines.append("")
        lines.append(f"[{mode}]")
        header = (
            f"{'configuration':28s} {'cpu s (min-max)':>20s} {'ratio':>7s} {'ratio':>7s} {'ns/chunk':>9s} "
            f"{'ns/chunk':>9s} {'instr/chunk':>11s} {'instr':>7s} {'A/B':>7s} {'A/B':>6s} "
            f"{'µs/stream':>9s} {'instr/stream':>12s}"
        )
        header2 = (
            f"{'':28s} {'':>20s} {'median':>7s} {'minima':>7s} {'median':>9s} "
            f"{'minima':>9s} {'procs':>11s} {'ratio':>7s} {'instr':>7s} {'~ns':>6s} "
            f"{'minima':>9s} {'procs':>12s}"
        )
        lines.append(header)
        lines.append(header2)
        lines.append("-" * len(header))
        rows = list(result["configs"])
        if MINIMAL in (callgrind.get("modes") or {}).get(mode, {}):
            rows.append(MINIMAL)
        if isinstance(ab, dict) and UNINSTRUMENTED + " (again)" in ab:
            rows.append(UNINSTRUMENTED + " (again)")
        for config in rows:
            row = [f"{config:28s}"]
            s = timings["summary"][mode].get(config) if timings else None
            cg = (callgrind.get("modes") or {}).get(mode, {}).get(config, {})
            cab = (ab.get(config) or {}).get(mode, {}) if isinstance(ab, dict) else {}
            if s:
                c = s["cpu_s"]
                row.append(f"{c['median']:7.3f} ({c['min']:.3f}-{c['max']:.3f})")
                row.append(f"{s['cpu_ratio']['median']:7.4f}")
                row.append(f"{s['cpu_ratio_of_minima']:7.4f}")
                row.append(f"{s['cpu_ns_per_chunk_overhead']['median']:9.0f}")
                row.append(f"{s['cpu_ns_per_chunk_overhead_of_minima']:9.0f}")
            else:
                row += [f"{'-':>20s}", f"{'-':>7s}", f"{'-':>7s}", f"{'-':>9s}", f"{'-':>9s}"]
            row.append(f"{_fmt(cg.get('instr_per_chunk_overhead')):>11s}")
            row.append(f"{_fmt(cg.get('instr_ratio'), '.4f'):>7s}")
            row.append(f"{_fmt(cab.get('instr_per_chunk_overhead')):>7s}")
            row.append(f"{_fmt(_ns_from_instr(timings, cab, mode) if timings else None):>6s}")
            row.append(f"{_fmt(s['cpu_us_per_stream_overhead_of_minima'] if s else None, '.1f'):>9s}")
            row.append(f"{_fmt(cg.get('instr_per_small_stream_overhead')):>12s}")
            lines.append(" ".join(row))
    lines.append("")
    for note in (
        "cpu s = CPU time of the measured process for one stream (wall time in the JSON); ratio = instrumented /"
        " uninstrumented: 'median' of per-round ratios (rounds interleave the configurations), 'minima' = fastest"
        " round / fastest round (load on a shared machine only adds time);",
        "ns/chunk = (instrumented - uninstrumented) CPU time / chunks, the same two ways;",
        "instr/chunk procs = callgrind, one process per configuration: (I(N-chunk stream) - I(0-chunk stream)) / N,"
        " minus uninstrumented; instr ratio = those per-chunk counts divided;",
        "A/B instr = the same, every configuration in turn in ONE process; ~ns = A/B instr x the uninstrumented"
        " fastest round's ns per instruction;",
        "µs/stream, instr/stream = per-stream fixed cost (many 5-chunk streams) minus uninstrumented;",
        "every process loads every instrumentor package and instruments its own configuration only;"
        f" '{MINIMAL}' loads none (callgrind only): its row is the size of code-layout effects between processes;",
        "'uninstrumented (again)' = A/B after the others' uninstrument(): what they leave behind.",
    ):
        lines.append("  " + note)
    lines += render_short_streams(result)
    if memory:
        lines.append("")
        first = next(iter(memory.values()))
        lines.append(
            f"[memory, tracemalloc, sync; {first['streams']} live streams; bytes minus uninstrumented, "
            "outside the HTTP/SSE transport buffers (all traced memory in the JSON)]"
        )
        header = (
            f"{'configuration':28s} {'per live stream @' + str(first['first']):>22s} "
            f"{'@' + str(first['second']) + ' chunks':>14s} {'growth B/chunk':>15s} "
            f"{'after close':>12s} {'kept/finished':>14s}"
        )
        lines.append(header)
        lines.append("-" * len(header))
        for config in result["configs"]:
            m = memory.get(config)
            if not m or "live_bytes_at_first_overhead" not in m:
                continue
            lines.append(
                f"{config:28s} {m['live_bytes_at_first_overhead']:22.0f} {m['live_bytes_at_second_overhead']:14.0f} "
                f"{m['growth_per_chunk_overhead']:15.2f} {m['bytes_after_close_overhead']:12.0f} "
                f"{m['kept_per_finished_stream_overhead']:14.1f}"
            )
    micro = result.get("micro")
    if micro:
        lines.append("")
        lines.append(f"[hot path alone: proxy + monitor over {micro['chunks']} prebuilt chunks, best of repeats]")
        cgm = callgrind.get("micro", {})
        for name in ("sync for", "sync next()", "async for"):
            m = micro[name]
            instr = cgm.get(name, {}).get("overhead_instr_per_chunk")
            lines.append(
                f"  {name:12s} overhead {m['overhead_ns_per_chunk']:6.0f} ns/chunk"
                f"  (bare {m['bare_ns_per_chunk']:.0f}, proxied {m['proxied_ns_per_chunk']:.0f})"
                f"  callgrind {_fmt(instr)} instr/chunk"
            )
        h = micro["gap_histogram_handover"]
        lines.append(
            f"  gap histogram hand-over at stream end ({h['gaps']} gaps): SDK merge "
            f"{h['sdk_merge']['us_per_stream']:.1f} µs ({h['sdk_merge']['ns_per_chunk']:.2f} ns/chunk, path "
            f"{h['sdk_merge']['path']}); one record() per gap {h['record_per_gap']['us_per_stream'] / 1000:.1f} ms "
            f"({h['record_per_gap']['ns_per_chunk']:.0f} ns/chunk)"
        )
    tel = result.get("telemetry")
    if tel:
        lines.append("")
        lines.append("[telemetry emitted per configuration (sanity check)]")
        for config, summary in tel.items():
            ours = summary["metrics"].get("llm_stream_otel:gen_ai.client.operation.time_per_output_chunk")
            lines.append(
                f"  {config:28s} spans {summary['spans']:6d}  log records {summary['log_records']:6d}  "
                f"metric streams {len(summary['metrics']):3d}"
                + (f"  time_per_output_chunk count {ours} (gaps seen {summary['gaps']})" if ours is not None else "")
            )
    return "\n".join(lines)


# =========================================================================== main


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=None, help="chunks per timed stream (default 20000; quick: 5000)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; quick: 3)")
    p.add_argument("--fixed-streams", type=int, default=None, help="5-chunk streams per fixed-cost sample (default 100)")
    p.add_argument("--fixed-chunks", type=int, default=5)
    p.add_argument("--modes", default="sync,async")
    p.add_argument(
        "--configs", default=",".join(TIMED_CONFIGS), help="comma-separated subset of: " + ", ".join(TIMED_CONFIGS)
    )
    p.add_argument("--no-ab", action="store_true", help="skip the same-process A/B callgrind run")
    p.add_argument("--quick", action="store_true", help="smaller run: 5000 chunks, 3 rounds, callgrind 300 chunks")
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--callgrind-chunks", type=int, default=None, help="chunks of the callgrind stream (default 1000)")
    p.add_argument("--callgrind-streams", type=int, default=None, help="5-chunk streams under callgrind (default 20)")
    p.add_argument("--callgrind-jobs", type=int, default=2, help="callgrind processes at once (default 2)")
    p.add_argument("--no-timings", action="store_true", help="skip the timed rounds (callgrind, memory, micro only)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-streams", type=int, default=20)
    p.add_argument("--memory-chunks", type=int, default=1000)
    p.add_argument("--memory-finished", type=int, default=100)
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--profile", action="store_true", help="also write pyinstrument profiles (one long stream, many short ones) per configuration to bench/results/")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/overhead-<time>.json)")
    # internal
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--callgrind-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--micro-callgrind-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--callgrind-ab-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.chunks = args.chunks or (5000 if quick else 20000)
    args.repeats = args.repeats or (3 if quick else 5)
    args.fixed_streams = args.fixed_streams or (50 if quick else 100)
    args.callgrind_chunks = args.callgrind_chunks or (300 if quick else 1000)
    args.callgrind_streams = args.callgrind_streams or (10 if quick else 20)
    args.modes = tuple(m for m in args.modes.split(",") if m)
    args.configs = [c for c in args.configs.split(",") if c]
    for config in args.configs:
        if config not in TIMED_CONFIGS:
            p.error(f"unknown configuration {config!r}")
    if UNINSTRUMENTED not in args.configs:
        args.configs.insert(0, UNINSTRUMENTED)
    return args


_MODULES = {
    "ours": "llm_stream_otel",
    "openai_v2": "opentelemetry.instrumentation.openai_v2",
    "openllmetry": "opentelemetry.instrumentation.openai",
    "openinference": "openinference.instrumentation.openai",
}


def _available(config: str) -> bool:
    """Are the packages of a configuration installed (``pip install -e '.[bench]'``)?"""
    import importlib.util

    for name in CONFIGS[config]:
        module = _MODULES[name.split(":", 1)[-1]]
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except ImportError:
            return False
    return True


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "openai",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-openai-v2",
        "opentelemetry-util-genai",
        "opentelemetry-instrumentation-openai",
        "openinference-instrumentation-openai",
        "llm-stream-otel",
        "wrapt",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.port)
    if args.callgrind_child:
        return callgrind_child_main(args.callgrind_child, args.port, args.chunks, args.fixed_streams)
    if args.micro_callgrind_child:
        return micro_callgrind_child_main(args.chunks)
    if args.callgrind_ab_child:
        return callgrind_ab_child_main(args.callgrind_ab_child.split(","), args.port, args.chunks)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    missing = [config for config in args.configs if not _available(config)]
    if missing:
        log(f"skipping (packages not installed; pip install -e '.[bench]'): {', '.join(missing)}")
        args.configs = [config for config in args.configs if config not in missing]
    started = time.time()
    result: Dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "callgrind_child", "port")},
        "configs": args.configs,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": _versions(),
    }
    server = Server([args.chunks, args.callgrind_chunks, args.memory_chunks + 50, args.fixed_chunks, 1, 0])
    workers: Dict[str, Worker] = {}
    try:
        log(f"bench server on 127.0.0.1:{server.port}; starting {len(args.configs)} workers")
        for config in args.configs:
            workers[config] = Worker(config, server.port)
        if not args.no_micro:
            log("hot path alone (proxy + monitor)")
            result["micro"] = micro_main(args.chunks, 7)
        if not args.no_timings:
            log(f"timings: {args.repeats} rounds x {len(args.configs)} configurations x {len(args.modes)} modes")
            timings = run_timings(workers, args, log)
            timings["chunks"] = args.chunks
            result["timings"] = timings
        if args.profile:
            os.makedirs(RESULTS, exist_ok=True)
            result["profiles"] = {}
            for config, worker in workers.items():
                path = os.path.join(RESULTS, f"profile-{config.replace('+', '_')}.txt")
                result["profiles"][config] = worker.ask(op="profile", mode="sync", chunks=args.chunks, path=path)
        result["telemetry"] = {config: worker.ask(op="telemetry") for config, worker in workers.items()}
        if not args.no_memory:
            log("memory (tracemalloc)")
            result["memory"] = run_memory(workers, args)
    finally:
        for worker in workers.values():
            worker.close()
    try:
        if not args.no_callgrind:
            log(f"callgrind: {len(args.configs)} configurations, {args.callgrind_chunks} chunks")
            result["callgrind"] = run_callgrind(args.configs, server.port, args, log)
    finally:
        server.close()
    cg_modes = (result.get("callgrind") or {}).get("modes") or {}
    if result.get("timings") and cg_modes:
        result["timings"]["_base_instr_per_chunk"] = {
            mode: cg_modes[mode].get(UNINSTRUMENTED, {}).get("instr_per_chunk") for mode in cg_modes
        }
    result["seconds"] = time.time() - started
    table = render(result)
    result["table"] = table.splitlines()
    out = args.out
    if out is None:
        os.makedirs(RESULTS, exist_ok=True)
        out = os.path.join(RESULTS, time.strftime("overhead-%Y%m%d-%H%M%S.json"))
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=False)
    print(table)
    print(f"\nJSON: {os.path.relpath(out)}  ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
