"""Instrumented traffic with every signature ``diagnose`` names, for the e2e test.

``python traffic.py PORT``: serves /metrics on PORT, sends, through the real
openai client to the real FaultServer, a few healthy streams and each cause
in turn (proxy idle cuts, a restart that cuts every open stream at once with
the app retrying, client read timeouts, stale pooled connections, 502/504
from "nginx"), prints ``holding:`` and keeps /metrics up until killed.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from llm_stream_otel.demo.fault_server import FaultServer
from llm_stream_otel.demo.otel_setup import setup
from llm_stream_otel.demo.scenarios import Scenario, run_scenario
from llm_stream_otel.instrumentor import LLMStreamInstrumentor


def _timeout_call(base_url: str, i: int) -> None:
    with openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=0.6) as client:
        try:
            for _ in client.chat.completions.create(
                model="m", stream=True, messages=[{"role": "user", "content": f"timeout {i}"}],
                extra_headers={"X-Fault": "hang;after=2;seconds=3"},
            ):
                pass
        except openai.APIError:
            pass


def main(port: int) -> None:
    telemetry = setup("diagnose-e2e", port, console=False)
    LLMStreamInstrumentor().instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    with FaultServer(chunks=8, chunk_delay=0.02) as server, ThreadPoolExecutor(max_workers=8) as pool:
        print(f"fault-injecting OpenAI-compatible server: {server.base_url}", flush=True)
        url = server.base_url

        def many(fault: str, n: int, style: str = "plain") -> None:
            s = Scenario(fault, 1, "chat", fault, style)
            list(pool.map(lambda i: run_scenario(s, url, f"{fault} {i} {time.time()}"), range(n)))

        many("none", 6)
        many("idle_cut;seconds=1.2", 5)
        many("http_502", 3)
        many("http_504", 3)
        many("stale_keepalive", 3, "stale_pool")
        list(pool.map(lambda i: _timeout_call(url, i), range(3)))
        many("none", 4)
        time.sleep(2.5)  # a quiet window before the restart
        slow = Scenario("restart", 1, "chat", "none;chunks=80;delay=0.04", "app_retry")
        futures = [pool.submit(run_scenario, slow, url, f"restart {i} {time.time()}") for i in range(6)]
        time.sleep(1.0)
        print(f"restart cut {server.cut_open_streams()} streams", flush=True)
        for f in futures:
            f.result()
        many("none", 4)
        print("holding: /metrics stays up", flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main(int(sys.argv[1]))
