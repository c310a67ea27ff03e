"""Steady instrumented traffic whose fault mix is switched at run time.

For the alert-delivery test: one process per service, exposing ``/metrics``
like the demo, whose mix changes when a line arrives on stdin::

    python -m llm_stream_otel.demo.phases --prometheus-port 9464 --mix faulty
    mix healthy        <- typed on stdin: from now on every stream completes

``faulty`` truncates half of the streams (silent truncations and socket
resets); ``healthy`` completes all of them.  ``--pause`` slows each worker
down (a quiet service).  EOF on stdin ends the process.  The streams are real:
the real ``openai`` client against the embedded fault server, instrumented.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

from ..instrumentor import LLMStreamInstrumentor
from .fault_server import FaultServer
from .otel_setup import setup
from .scenarios import Scenario, run_scenario

_HEALTHY = Scenario("chat, healthy", 1, "chat", "none", "plain")
MIXES: Dict[str, List[Scenario]] = {
    "healthy": [_HEALTHY],
    "faulty": [
        _HEALTHY,
        Scenario("chat, silent truncation", 1, "chat", "missing_terminator", "plain"),
        _HEALTHY,
        Scenario("chat, socket reset", 1, "chat", "reset_mid_chunk", "plain"),
    ],
}


class _Traffic:
    """Workers cycling through the current mix until stopped."""

    def __init__(self, base_url: str, mix: str, pause: float) -> None:
        self.base_url, self.mix, self.pause = base_url, mix, pause
        self.stop = threading.Event()
        self.done = 0
        self._lock = threading.Lock()

    def worker(self) -> None:
        i = 0
        while not self.stop.is_set():
            scenarios = MIXES[self.mix]
            run_scenario(scenarios[i % len(scenarios)], self.base_url, f"phases question {i}")
            i += 1
            with self._lock:
                self.done += 1
            self.stop.wait(self.pause)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llm_stream_otel.demo.phases", description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus-port", type=int, required=True)
    ap.add_argument("--mix", choices=sorted(MIXES), default="faulty")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds each worker waits between calls")
    args = ap.parse_args(argv)
    telemetry = setup("llm-stream-otel-phases", args.prometheus_port, console=False)
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    try:
        with FaultServer(chunks=8, chunk_delay=0.02) as server:
            traffic = _Traffic(server.base_url, args.mix, args.pause)
            workers = [threading.Thread(target=traffic.worker, daemon=True) for _ in range(args.concurrency)]
            for w in workers:
                w.start()
            print(f"serving {telemetry.prometheus_url} mix {traffic.mix}", flush=True)
            for line in sys.stdin:
                words = line.split()
                if len(words) == 2 and words[0] == "mix" and words[1] in MIXES:
                    traffic.mix = words[1]
                    print(f"mix {traffic.mix} after {traffic.done} calls", flush=True)
            traffic.stop.set()
            for w in workers:
                w.join(timeout=10)
    finally:
        instrumentor.uninstrument()
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
