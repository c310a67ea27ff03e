"""N worker processes of one service (issue 19, item 6): the README's two supported setups.

- One Prometheus port per worker: three ``llm-stream-otel demo --hold``
  processes (one service, each its own ``--prometheus-port``), one real
  Prometheus scraping the three as one job; the overview dashboard's
  "Streams" stat (lifetime form) equals the sum of what the workers counted.
  A fourth worker on an already used port does not start.
- OTLP: three workers of a plain app under ``opentelemetry-instrument``
  export OTLP/HTTP metrics to a loopback receiver (decoded with
  opentelemetry-proto); their series are distinct (and add up to what was
  streamed) only when their ``service.instance.id`` differs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tools.servers import prometheus as harness
from tools.dashboards import queries
from llm_stream_otel.demo.fault_server import FaultServer

WORKERS = 3
JOB = "workers"
APP = Path(__file__).parent.parent / "apps" / "stream_app.py"
_OUTCOMES = "llm_stream_outcomes_total"


class WorkersPrometheus(harness.Prometheus):
    """One Prometheus, one job, one target per worker."""

    def __init__(self, workdir: Path, targets: List[str]) -> None:
        super().__init__(workdir, target=targets[0], job=JOB)
        self.targets = targets

    def config_text(self) -> str:
        config = json.loads(harness.prometheus_config(JOB, self.targets[0]))
        config["scrape_configs"][0]["static_configs"][0]["targets"] = self.targets
        return json.dumps(config, indent=2) + "\n"


def _streams_stat() -> str:
    """The overview's "Streams" stat for our job, ``increase(x[$__range])`` -> ``x``."""
    overview = harness.load_dashboards()["llm-streams-overview.json"]
    (expr,) = [t["expr"] for p in queries.iter_panels(overview) if p.get("title") == "Streams"
               for t in p.get("targets", [])]
    expr = queries.substitute(expr, {"job": JOB})
    out = queries_lifetime(expr)
    assert _OUTCOMES in out and "increase(" not in out, out
    return out


def queries_lifetime(expr: str) -> str:
    """``increase(x[w])`` -> ``x``: the stat over the whole run, exactly what was counted."""
    return re.sub(r"\bincrease\(([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\[[^\]]+\]\)", r"\1", expr)


def test_one_prometheus_port_per_worker_adds_up(tmp_path, require):
    require("prometheus (on PATH)", harness.prometheus_binary() is not None, "apt-get install -y prometheus")
    demos = [harness.Demo(3, seed=i + 1, extra_args=["--concurrency", "2"], env={"OTEL_SERVICE_NAME": "api"})
             for i in range(WORKERS)]
    assert len({d.port for d in demos}) == WORKERS
    with WorkersPrometheus(tmp_path / "prom", [f"127.0.0.1:{d.port}" for d in demos]) as prom:
        try:
            for d in demos:
                d.start()
            for d in demos:
                d.wait_holding(timeout=60)
            counted = [harness.counter_sum(d.scrape(), _OUTCOMES) for d in demos]
            assert all(c > 0 for c in counted), counted
            expr = _streams_stat()
            deadline = time.monotonic() + 20
            got: List[float] = []
            while time.monotonic() < deadline:
                got = harness.finite_values(prom.query(expr))
                if got and got[0] >= sum(counted):
                    break
                time.sleep(0.25)
            assert got == [sum(counted)], (got, counted)
            per_instance = prom.query(f'sum by (instance) ({_OUTCOMES}{{job="{JOB}"}})')
            assert len(per_instance) == WORKERS
            # A worker on a port already in use does not start (exit 2, a clean message).
            busy = subprocess.run(
                [sys.executable, "-m", "llm_stream_otel.cli", "demo", "--streams", "1", "--prometheus-port",
                 str(demos[0].port)], capture_output=True, text=True, timeout=60)
            assert busy.returncode == 2, busy.stdout + busy.stderr
        finally:
            for d in demos:
                d.stop()


# ------------------------------------------------------------------ OTLP


class _Receiver:
    """An OTLP/HTTP metrics endpoint on loopback: keeps every decoded request."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        self.requests: List[Any] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/metrics":
                    message = ExportMetricsServiceRequest()
                    message.ParseFromString(body)
                    received.append(message)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def outcome_points(self) -> List[Tuple[Tuple, Tuple, float]]:
        """(resource attributes, point attributes, value) of every llm.stream.outcomes point received."""
        out = []
        for request in self.requests:
            for rm in request.resource_metrics:
                resource = tuple(sorted((a.key, a.value.string_value) for a in rm.resource.attributes))
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != "llm.stream.outcomes":
                            continue
                        for p in metric.sum.data_points:
                            attrs = tuple(sorted((a.key, str(a.value)) for a in p.attributes))
                            out.append((resource, attrs, float(p.as_int or p.as_double)))
        return out


def _run_workers(receiver: _Receiver, fault_url: str, instance_ids: List[Optional[str]]) -> None:
    instrument = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    procs = []
    for instance in instance_ids:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            APP_BASE_URL=fault_url,
            OTEL_SERVICE_NAME="api",
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_METRICS_EXPORTER="otlp_proto_http",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=receiver.url + "/v1/metrics",
        )
        if instance is not None:
            env["OTEL_RESOURCE_ATTRIBUTES"] = f"service.instance.id={instance}"
        procs.append(subprocess.Popen([instrument, sys.executable, str(APP)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.count("APP: stream") == 2, out


def _latest_per_identity(points: List[Tuple[Tuple, Tuple, float]]) -> Dict[Tuple, float]:
    """What a Collector keeps of cumulative series: the last value per (resource, attributes)."""
    latest: Dict[Tuple, float] = {}
    for resource, attrs, value in points:
        latest[(resource, attrs)] = value
    return latest


def _sdk_sets_instance_ids() -> bool:
    """Recent SDKs give every process (and every forked child) a random ``service.instance.id``."""
    from opentelemetry.sdk import resources

    return hasattr(resources, "ServiceInstanceIdResourceDetector")


@pytest.mark.parametrize("ids", ["distinct", "same", "unset"])
def test_otlp_workers_are_distinct_only_with_their_own_instance_id(ids):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")
    instance_ids = {"distinct": [f"host-{i}" for i in range(WORKERS)], "same": ["host"] * WORKERS,
                    "unset": [None] * WORKERS}[ids]
    with FaultServer(chunks=4) as fault, _Receiver() as receiver:
        _run_workers(receiver, fault.base_url, instance_ids)
    points = receiver.outcome_points()
    streamed = 2 * WORKERS  # each worker: one cut stream, one completed
    assert len(points) >= 2 * WORKERS, points  # every worker exported its two outcomes
    latest = _latest_per_identity(points)
    distinct = ids == "distinct" or (ids == "unset" and _sdk_sets_instance_ids())
    if distinct:
        assert len(latest) == 2 * WORKERS  # 2 outcomes x 3 workers
        assert sum(latest.values()) == streamed
    else:
        assert len(latest) == 2  # the workers' series collide: one per outcome
        assert sum(latest.values()) == 2 < streamed
