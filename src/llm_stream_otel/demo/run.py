"""``llm-stream-otel demo``: real streams, cut in real ways, measured live.

Starts the embedded fault server on a free loopback port, instruments the
real openai client (and the anthropic one, when installed), drives a
weighted mix of scenarios (sync and async, chat, Responses, legacy
completions and Anthropic messages, cuts, stalls, silent truncations, app
retry loops, the resilient helper) and ends with the numbers.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, List, Optional, Set

from ..instrumentor import LLMStreamInstrumentor
from .fault_server import FaultServer
from .otel_setup import DemoTelemetry, PortBusyError, setup
from . import gemini_scenarios
from .scenarios import GEMINI_SCENARIOS, LONG_ANSWER, Scenario, available_scenarios, pick, run_scenario
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
#: Long answers opened just before each restart, on top of the usual traffic: a
#: restart cuts every open stream at once, and with only the usual few open
#: its burst would hide in the steady background of resets (diagnose compares
#: each second's instant cuts with the usual second's).
RESTART_WAVE = 12
#: The restart comes once the wave is streaming (every long answer has its
#: headers), or at the latest this many seconds after it was opened.
_WAVE_OPEN = 2.0


class _Restarts:
    """When to open a wave of long answers and when to cut every open stream."""

    def __init__(self) -> None:
        self.done = 0  # restarts scheduled so far
        self.cut_at: Optional[float] = None  # the latest time of the pending restart
        self.wave = 0  # long answers opened for it
        self.cuts: List[int] = []  # streams each restart cut

    def due(self, completed: int) -> bool:
        if self.cut_at is None and completed // _RESTART_EVERY > self.done:
            self.done += 1
            self.cut_at = time.monotonic() + _WAVE_OPEN
            return True
        return False

    def wait_timeout(self) -> float:
        return 0.25 if self.cut_at is None else 0.02  # a restart is pending: look often

    def cut_now(self, server: FaultServer) -> None:
        if self.cut_at is None:
            return
        if server.open_streams >= self.wave or time.monotonic() >= self.cut_at:
            self.cut_at = None
            self.cuts.append(server.cut_open_streams())  # a server restart: every open stream cut at once


def _drive(server: FaultServer, options: DemoOptions, progress: _Progress, stop: threading.Event) -> List[int]:
    """Run the traffic; return how many streams each simulated restart cut."""
    rng = random.Random(options.seed)
    mix = list(available_scenarios()) + (list(GEMINI_SCENARIOS) if options.gemini else [])
    deadline = time.monotonic() + options.duration if options.duration else None
    submitted = completed = 0
    running: Set[Future] = set()  # the steady traffic, at most ``concurrency`` calls
    wave: Set[Future] = set()  # long answers opened for a restart
    restarts = _Restarts()

    def budget() -> int:
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        return RESTART_WAVE if options.streams is None else max(0, options.streams - submitted)

    def submit(scenario: Scenario, into: Set[Future]) -> None:
        nonlocal submitted
        prompt = f"demo question {submitted}: explain streaming #{rng.randrange(10**9)}"
        into.add(pool.submit(run_scenario, scenario, server.base_url, prompt))
        submitted += 1

    with ThreadPoolExecutor(max_workers=options.concurrency + RESTART_WAVE, thread_name_prefix="demo") as pool:
        while not stop.is_set():
            while budget() and len(running) < options.concurrency:
                submit(pick(rng, mix), running)
            if not running and not wave:
                break
            finished, _ = wait(running | wave, timeout=restarts.wait_timeout(), return_when=FIRST_COMPLETED)
            running -= finished
            wave -= finished
            for _ in finished:
                progress.advance()
                completed += 1
            if budget() and restarts.due(completed):  # no restart once the traffic is over
                restarts.wave = min(RESTART_WAVE, budget())
                for _ in range(restarts.wave):
                    submit(LONG_ANSWER, wave)
            restarts.cut_now(server)
    return restarts.cuts


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
            restarts: List[int] = []
            try:
                with _Progress(options.streams, options.duration, options.plain, snapshot) as progress:
                    restarts = _drive(server, options, progress, stop)
            except KeyboardInterrupt:
                stop.set()
                out("interrupted: finishing the streams in flight, then the summary")
            out("")
            out(render_text(snapshot()))
            if restarts:
                out(f"simulated server restarts: {len(restarts)}, each cutting every open stream at once "
                    f"({', '.join(map(str, restarts))} streams)")
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
