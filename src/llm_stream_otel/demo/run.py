"""``llm-stream-otel demo``: real streams, cut in real ways, measured live.

Starts the embedded fault server on a free loopback port, instruments the
real openai client, drives a weighted mix of scenarios (sync and async,
chat, Responses and legacy completions, cuts, stalls, silent truncations,
app retry loops, the resilient helper) and ends with the numbers.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional, Set

from ..instrumentor import LLMStreamInstrumentor
from .fault_server import FaultServer
from .otel_setup import DemoTelemetry, PortBusyError, setup
from . import gemini_scenarios
from .scenarios import GEMINI_SCENARIOS, SCENARIOS, pick, run_scenario
from .summary import Summary, render_text, summarize, summary_rows


@dataclass
class DemoOptions:
    streams: Optional[int] = 60
    duration: Optional[float] = None
    concurrency: int = 6
    prometheus_port: int = 9464
    console: bool = False
    seed: Optional[int] = None
    stall_threshold: float = 1.0
    chunk_delay: float = 0.03
    hold: bool = False
    plain: bool = False
    gemini: bool = False  # add Gemini / Vertex AI traffic (google-genai)


class _Progress:
    """Live progress: a rich bar + table when rich is installed, plain lines otherwise."""

    def __init__(self, total: Optional[int], duration: Optional[float], plain: bool, snapshot: Callable[[], Summary]):
        self.total, self.duration, self.snapshot = total, duration, snapshot
        self.done = 0
        self.started = time.monotonic()
        self._live = None
        if not plain:
            try:
                from rich.live import Live

                self._live = Live(self._render(), refresh_per_second=4, transient=False)
            except ImportError:
                self._live = None

    def _render(self):  # type: ignore[no-untyped-def]
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        summary = self.snapshot()
        table = Table(title="llm-stream-otel demo (live)", show_header=False, expand=False)
        for label, value in summary_rows(summary):
            table.add_row(label, value)
        if self.total:
            bar = ProgressBar(total=self.total, completed=self.done, width=40)
            label = f"{self.done}/{self.total} logical calls"
        else:
            elapsed = time.monotonic() - self.started
            bar = ProgressBar(total=self.duration or 1, completed=min(elapsed, self.duration or 1), width=40)
            label = f"{elapsed:.0f}/{self.duration:.0f} s, {self.done} logical calls"
        return Group(bar, label, table)

    def __enter__(self) -> "_Progress":
        if self._live is not None:
            self._live.__enter__()
        return self

    def advance(self) -> None:
        self.done += 1
        if self._live is not None:
            self._live.update(self._render())
        elif self.done % 10 == 0:
            print(f"... {self.done} logical calls", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)


_RESTART_EVERY = 60  # completed calls between two simulated server restarts


def _drive(server: FaultServer, options: DemoOptions, progress: _Progress, stop: threading.Event) -> None:
    rng = random.Random(options.seed)
    mix = list(SCENARIOS) + (list(GEMINI_SCENARIOS) if options.gemini else [])
    deadline = time.monotonic() + options.duration if options.duration else None
    submitted = completed = 0
    running: Set[Future] = set()
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="demo") as pool:
        while not stop.is_set():
            more = (options.streams is None or submitted < options.streams) and (
                deadline is None or time.monotonic() < deadline
            )
            while more and len(running) < options.concurrency:
                scenario = pick(rng, mix)
                prompt = f"demo question {submitted}: explain streaming #{rng.randrange(10**9)}"
                running.add(pool.submit(run_scenario, scenario, server.base_url, prompt))
                submitted += 1
                more = (options.streams is None or submitted < options.streams) and (
                    deadline is None or time.monotonic() < deadline
                )
            if not running:
                break
            finished, running = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            for _ in finished:
                progress.advance()
                completed += 1
                if completed % _RESTART_EVERY == 0:
                    server.cut_open_streams()  # a server restart: every open stream cut at once


def run_demo(options: DemoOptions, out: Callable[[str], None] = print) -> int:
    if options.gemini and not gemini_scenarios.available():
        out('error: --gemini needs google-genai: pip install "llm-stream-otel[google-genai]"')
        return 2
    try:
        telemetry: DemoTelemetry = setup("llm-stream-otel-demo", options.prometheus_port, options.console)
    except PortBusyError as exc:
        out(f"error: {exc}")
        return 2
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        stall_threshold=options.stall_threshold,
    )
    stop = threading.Event()

    def snapshot() -> Summary:
        return summarize(telemetry.spans.get_finished_spans(), telemetry.metrics.get_metrics_data())

    try:
        with FaultServer(chunks=12, chunk_delay=options.chunk_delay, seed=options.seed) as server:
            out(f"fault-injecting OpenAI-compatible server: {server.base_url}")
            if telemetry.prometheus_url:
                out(f"Prometheus metrics: {telemetry.prometheus_url}")
            try:
                with _Progress(options.streams, options.duration, options.plain, snapshot) as progress:
                    _drive(server, options, progress, stop)
            except KeyboardInterrupt:
                stop.set()
                out("interrupted: finishing the streams in flight, then the summary")
            out("")
            out(render_text(snapshot()))
            if options.hold and telemetry.prometheus_url:
                out(f"holding: metrics stay at {telemetry.prometheus_url}; Ctrl-C to exit")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    finally:
        instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


__all__ = ["DemoOptions", "run_demo"]
