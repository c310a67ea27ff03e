"""The fleet path on loopback: many scrape jobs, Alertmanager, VictoriaMetrics.

Extends :mod:`harness` (one Prometheus, one demo) for the fleet tests:

- :class:`FleetPrometheus`: one Prometheus scraping several services (one
  scrape job per service, named after it, as the dashboards' ``job``
  variable expects), optionally sending alerts to an Alertmanager and
  ``remote_write``-ing everything to a long-term store;
- :class:`Alertmanager`: ``prometheus-alertmanager`` (Debian
  ``prometheus-alertmanager``) with clustering off;
- :class:`WebhookReceiver`: a loopback HTTP server that keeps every
  Alertmanager webhook payload it receives;
- :class:`VictoriaMetrics`: single-node ``victoria-metrics`` (Debian
  ``victoria-metrics``), queried through its Prometheus-compatible API.

Every server binds 127.0.0.1 on a free port, lives in a temporary directory
and is stopped (SIGTERM, then SIGKILL) on exit.  Standard library only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from tools.servers.prometheus import (
    EVALUATION_INTERVAL,
    SCRAPE_INTERVAL,
    HarnessError,
    Prometheus,
    PrometheusAPI,
    _popen_extra,
    _stop_process,
    free_port,
)

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
VICTORIA_METRICS_BINARIES = ("victoria-metrics", "victoria-metrics-prod")


def find_binary(names: Sequence[str]) -> Optional[str]:
    """The first of ``names`` on PATH (Debian and upstream name them differently)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def fleet_prometheus_config(jobs: Mapping[str, str], rule_files: Sequence[Union[str, Path]] = (),
                            alertmanager: Optional[str] = None, remote_write: Optional[str] = None,
                            scrape_interval: str = SCRAPE_INTERVAL,
                            evaluation_interval: str = EVALUATION_INTERVAL) -> str:
    """prometheus.yml: one scrape job per service (``{job: "host:port"}``)."""
    config: Dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(r).resolve()) for r in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs.items()
        ],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    if remote_write:
        # small batches, flushed at once: the long-term store keeps up with the test
        config["remote_write"] = [{"url": remote_write, "queue_config": {"batch_send_deadline": "1s"}}]
    return json.dumps(config, indent=2) + "\n"


class FleetPrometheus(Prometheus):
    """One Prometheus scraping every service of ``jobs``."""

    def __init__(self, workdir: Path, jobs: Mapping[str, str], rule_files: Sequence[Union[str, Path]] = (),
                 alertmanager: Optional[str] = None, remote_write: Optional[str] = None) -> None:
        first = next(iter(jobs))
        super().__init__(workdir, target=jobs[first], job=first, rule_files=rule_files)
        self.jobs, self.alertmanager, self.remote_write = dict(jobs), alertmanager, remote_write

    def config_text(self) -> str:
        return fleet_prometheus_config(self.jobs, self.rule_files, self.alertmanager, self.remote_write)


class _Server:
    """A loopback server process started from a command line, ready when ``ready_path`` answers 200."""

    name = "server"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, binary: str, host: str = "127.0.0.1") -> None:
        self.workdir, self.binary, self.host = Path(workdir), binary, host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> "_Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True,
                                         **_popen_extra())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        self.stop()
        raise HarnessError(f"{self.name} not ready after {timeout:g}s:\n{self.log()}")

    def stop(self) -> None:
        _stop_process(self.proc)

    def log(self, tail: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Alertmanager(_Server):
    """``prometheus-alertmanager`` with ``config_text`` as its alertmanager.yml, no clustering."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_text: str, binary: Optional[str] = None) -> None:
        binary = binary or find_binary(ALERTMANAGER_BINARIES)
        if binary is None:
            raise HarnessError("alertmanager is not on PATH (Debian: apt-get install -y prometheus-alertmanager)")
        super().__init__(workdir, binary)
        self.config_path = self.workdir / "alertmanager.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_text, encoding="utf-8")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> List[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # a single instance: no gossip port
            "--log.level=warn",
        ]

    def alerts(self) -> List[Dict[str, Any]]:
        """Alertmanager's current alerts (``/api/v2/alerts``)."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=10) as r:
            return json.load(r)


class VictoriaMetrics(_Server):
    """Single-node VictoriaMetrics; :attr:`api` speaks its Prometheus-compatible query API."""

    name = "victoria-metrics"
    ready_path = "/health"

    def __init__(self, workdir: Path, binary: Optional[str] = None) -> None:
        binary = binary or find_binary(VICTORIA_METRICS_BINARIES)
        if binary is None:
            raise HarnessError("victoria-metrics is not on PATH (Debian: apt-get install -y victoria-metrics)")
        super().__init__(workdir, binary)
        self.api = PrometheusAPI(self.url)

    @property
    def remote_write_url(self) -> str:
        return self.url + "/api/v1/write"

    def command(self) -> List[str]:
        return [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=1d",
            "-search.latencyOffset=0s",  # answer with the newest samples (default: hide the last 30 s)
            "-search.disableCache",  # every query reads the data (the test compares, it does not benchmark)
            "-loggerLevel=ERROR",
            "-memory.allowedPercent=20",
        ]

    def flush(self) -> None:
        """Make the samples received so far searchable (``/internal/force_flush``)."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass


class WebhookReceiver:
    """A loopback HTTP server collecting the JSON bodies POSTed to it (Alertmanager webhooks).

    Each payload gets two keys of ours: ``path`` (the URL path) and
    ``received_at`` (unix time).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.payloads: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.payloads.append({"path": self.path, "received_at": time.time(),
                                              **json.loads(body or b"{}")})
                    receiver._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def wait_for(self, predicate, timeout: float) -> Optional[Dict[str, Any]]:  # type: ignore[no-untyped-def]
        """The first payload satisfying ``predicate`` (waiting up to ``timeout`` s), or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for payload in self.payloads:
                    if predicate(payload):
                        return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


__all__ = [
    "Alertmanager",
    "FleetPrometheus",
    "VictoriaMetrics",
    "WebhookReceiver",
    "find_binary",
    "fleet_prometheus_config",
]
