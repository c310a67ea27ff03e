"""A real Prometheus scraping the instrumented demo, on loopback.

Shared by the end-to-end test (``tests/dashboards/test_e2e_prometheus.py``)
and the preview renderer (``python -m tools.dashboards.preview
--run-demo``)::

    with demo_with_prometheus(duration=20) as run:
        run.prometheus.query('sum(llm_stream_outcomes_total{job="%s"})' % run.job)

:func:`demo_with_prometheus` starts

- ``prometheus`` (the binary on ``PATH``; Debian: ``apt-get install
  prometheus``) in a temporary directory, on ``127.0.0.1:<free port>``, with
  a 1 s scrape and evaluation interval and the bundled alert rules
  (``dashboards/alerts/llm-stream-alerts.yaml``);
- ``llm-stream-otel demo --duration N --hold --plain --prometheus-port <free
  port> --seed S`` as a subprocess: fault-injected traffic through the real
  ``openai`` client, instrumented, exposed with the OpenTelemetry Prometheus
  exporter; ``--hold`` keeps ``/metrics`` up after the traffic;

waits until the traffic is over and Prometheus has scraped its final
numbers, yields a :class:`Run`, and on exit stops both processes (SIGINT,
then SIGTERM, then SIGKILL) and removes the temporary directory.

Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

#: The scrape job, named after the service (the dashboards' ``job`` variable).
JOB = "llm-stream-otel-demo"
SCRAPE_INTERVAL = "1s"
EVALUATION_INTERVAL = "1s"
#: The counter whose final value tells that Prometheus has the whole run.
_OUTCOMES = "llm_stream_outcomes_total"


class HarnessError(RuntimeError):
    """Prometheus or the demo did not start, died, or never delivered data."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prometheus_binary() -> Optional[str]:
    """The ``prometheus`` executable on PATH, or None."""
    return shutil.which("prometheus")


def bundled_dir() -> Path:
    """The bundled ``dashboards/`` folder (repo checkout or installed wheel)."""
    from llm_stream_otel.bundled import bundled_root

    root = bundled_root()
    if root is None:
        raise HarnessError("the bundled dashboards are missing from this installation")
    return root / "dashboards"


def rule_file() -> Path:
    return bundled_dir() / "alerts" / "llm-stream-alerts.yaml"


def recording_rule_file() -> Path:
    """The recording rules the fleet dashboard reads."""
    return bundled_dir() / "alerts" / "llm-stream-recording-rules.yaml"


def load_dashboards() -> Dict[str, Dict[str, Any]]:
    """``{file name: dashboard JSON}`` of every bundled dashboard."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(bundled_dir().glob("*.json"))}


def prometheus_config(job: str, target: str, rule_files: Sequence[Union[str, Path]] = (),
                      scrape_interval: str = SCRAPE_INTERVAL,
                      evaluation_interval: str = EVALUATION_INTERVAL) -> str:
    """prometheus.yml text (JSON is YAML: no PyYAML needed)."""
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(r).resolve()) for r in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    return json.dumps(config, indent=2) + "\n"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, Linux only
    """preexec_fn: SIGTERM the child if the process that started it dies (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux / no libc: best effort
        pass


def _popen_extra() -> Dict[str, Any]:
    return {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}


def _stop_process(proc: Optional[subprocess.Popen], first: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """``first``, then SIGTERM, then SIGKILL; always reaps the process."""
    if proc is None or proc.poll() is not None:
        return
    for sig in dict.fromkeys((first, signal.SIGTERM)):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait(timeout=10)


class PrometheusAPI:
    """A small client of Prometheus' HTTP API (``/api/v1``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def log(self, tail: int = 40) -> str:
        return ""

    def api(self, path: str, params: Optional[Mapping[str, Any]] = None, timeout: float = 30.0) -> Any:
        """``data`` of a ``/api/v1/<path>`` answer; raises on ``status: error``."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422: bad query, with a JSON error
            try:
                doc = json.load(exc)
            except ValueError:
                raise HarnessError(f"{url}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:  # refused, timed out, not JSON
            raise HarnessError(f"{self.url}: {exc}") from None
        if doc.get("status") != "success":
            raise HarnessError(f"{path} {dict(params or {})}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: Optional[float] = None) -> List[Dict[str, Any]]:
        """Instant query: ``[{"metric": {...}, "value": [t, "v"]}]``."""
        params: Dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> List[Dict[str, Any]]:
        """Range query: ``[{"metric": {...}, "values": [[t, "v"], ...]}]``."""
        data = self.api("query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                        "step": f"{step:g}"})
        return data["result"]

    def label_values(self, label: str, match: str) -> List[str]:
        return self.api(f"label/{label}/values", {"match[]": match})

    def rules(self) -> List[Dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def alerts(self) -> List[Dict[str, Any]]:
        return self.api("alerts")["alerts"]


class Prometheus(PrometheusAPI):
    """One ``prometheus`` process on loopback (and its API client)."""

    def __init__(self, workdir: Path, target: str, job: str = JOB,
                 rule_files: Sequence[Union[str, Path]] = (), binary: Optional[str] = None,
                 port: Optional[int] = None, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.target, self.job, self.rule_files = target, job, list(rule_files)
        self.binary = binary or prometheus_binary()
        if self.binary is None:
            raise HarnessError("prometheus is not on PATH (Debian: apt-get install -y prometheus)")
        self.host, self.port = host, port or free_port(host)
        super().__init__(f"http://{host}:{self.port}")
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "prometheus.log"

    def config_text(self) -> str:
        """The prometheus.yml this process runs with (subclasses add jobs, alerting...)."""
        return prometheus_config(self.job, self.target, self.rule_files)

    def start(self, timeout: float = 30.0) -> "Prometheus":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text(), encoding="utf-8")
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True, **_popen_extra(),
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise HarnessError(f"prometheus not ready after {timeout:g}s:\n{self.log()}")

    def stop(self) -> None:
        _stop_process(self.proc)

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, tail: int = 40) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

def finite_values(result: Sequence[Mapping[str, Any]]) -> List[float]:
    """Every finite sample value of an instant or range query result."""
    out = []
    for series in result:
        samples = series.get("values") or ([series["value"]] if "value" in series else [])
        for _, v in samples:
            x = float(v)
            if math.isfinite(x):
                out.append(x)
    return out


class Demo:
    """``llm-stream-otel demo ... --hold`` as a subprocess."""

    def __init__(self, duration: float, port: Optional[int] = None, seed: int = 1,
                 extra_args: Sequence[str] = (), python: str = sys.executable,
                 host: str = "127.0.0.1", env: Optional[Mapping[str, str]] = None) -> None:
        self.duration, self.seed = duration, seed
        self.env = dict(env or {})  # e.g. OTEL_SERVICE_NAME
        self.port = port or free_port(host)
        self.metrics_url = f"http://{host}:{self.port}/metrics"
        self.args = [
            python, "-m", "llm_stream_otel.cli", "demo",
            "--duration", f"{duration:g}", "--hold", "--plain",
            "--prometheus-port", str(self.port), "--seed", str(seed), *extra_args,
        ]
        self.proc: Optional[subprocess.Popen] = None
        self.lines: List[str] = []
        self.started_at: Optional[float] = None  # unix time the traffic began (about)
        self.ended_at: Optional[float] = None  # unix time the traffic ended
        self._holding = threading.Event()
        self._reader: Optional[threading.Thread] = None

    def start(self) -> "Demo":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for key in [k for k in env if k.startswith("OTEL_EXPORTER_OTLP")]:
            env.pop(key)  # Prometheus only: never ship the test traffic elsewhere
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True, errors="replace", start_new_session=True, **_popen_extra(),
        )
        self._reader = threading.Thread(target=self._read, name="demo-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("fault-injecting"):
                self.started_at = time.time()
            elif line.startswith("holding:"):
                self.ended_at = time.time()
                self._holding.set()

    def output(self, tail: int = 60) -> str:
        return "\n".join(self.lines[-tail:])

    def wait_holding(self, timeout: float) -> None:
        """Until the traffic is over and the demo holds ``/metrics`` up."""
        deadline = time.monotonic() + timeout
        while not self._holding.wait(0.2):
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"the demo exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"the demo did not finish its traffic in {timeout:g}s:\n{self.output()}")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode("utf-8", "replace")

    def stop(self) -> None:
        _stop_process(self.proc, first=signal.SIGINT)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> "Demo":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SAMPLE = re.compile(r"^(\w+)(?:\{.*\})?\s+(\S+)$")


def counter_sum(exposition: str, name: str) -> float:
    """Sum of every sample of ``name`` in a text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            total += float(m.group(2))
    return total


@dataclass
class Run:
    """What :func:`demo_with_prometheus` yields."""

    prometheus: Prometheus
    demo: Demo
    job: str
    start: float  # unix time of the first scraped outcome, less one second
    end: float  # unix time the traffic ended and Prometheus had it all
    streams: float  # llm_stream_outcomes_total at the end, as the app exposes it
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.prometheus.url


def wait_for_final_scrape(prometheus: Prometheus, demo: Demo, job: str, timeout: float = 20.0) -> float:
    """Until Prometheus' sum of the outcomes counter equals the app's final one."""
    expected = counter_sum(demo.scrape(), _OUTCOMES)
    if expected <= 0:
        raise HarnessError(f"the demo exposes no {_OUTCOMES}:\n{demo.output()}")
    expr = f'sum({_OUTCOMES}{{job="{job}"}})'
    deadline = time.monotonic() + timeout
    got: List[float] = []
    while time.monotonic() < deadline:
        got = finite_values(prometheus.query(expr))
        if got and got[0] >= expected:
            return expected
        time.sleep(0.25)
    raise HarnessError(
        f"Prometheus has {got or 'no'} {expr}, the app {expected:g}, after {timeout:g}s.\n"
        f"targets: {prometheus.api('targets')['activeTargets']}\nprometheus log:\n{prometheus.log()}"
    )


def first_sample_time(prometheus: PrometheusAPI, job: str, since: float, until: float) -> float:
    """When Prometheus first scraped an outcome of ``job`` (less a second), or ``since``."""
    result = prometheus.query_range(f'sum({_OUTCOMES}{{job="{job}"}})', since, until, 1)
    times = [float(t) for series in result for t, _ in series["values"]]
    return max(since, min(times) - 1.0) if times else since


@contextmanager
def demo_with_prometheus(duration: float = 20.0, seed: int = 1, job: str = JOB,
                         workdir: Optional[Union[str, Path]] = None,
                         rule_files: Optional[Sequence[Union[str, Path]]] = None,
                         log: Any = None) -> Iterator[Run]:
    """Prometheus + the demo; yields a :class:`Run` once Prometheus has all the data.

    ``rule_files`` defaults to the bundled alert rules.  ``log`` (e.g.
    ``print``) gets progress lines.  Both processes are stopped on exit,
    whatever happens.
    """
    say = log or (lambda *_: None)
    rules = list(rule_files) if rule_files is not None else [rule_file()]
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="llm-stream-otel-e2e-"))
    t0 = time.monotonic()
    timings: Dict[str, float] = {}
    try:
        demo = Demo(duration=duration, seed=seed)
        prometheus = Prometheus(tmp, target=f"127.0.0.1:{demo.port}", job=job, rule_files=rules)
        with prometheus:
            timings["prometheus_ready"] = time.monotonic() - t0
            say(f"prometheus {prometheus.url} (job {job}, scraping {demo.metrics_url})")
            with demo:
                say(f"demo: {duration:g}s of fault-injected traffic (seed {seed})")
                demo.wait_holding(timeout=duration + 60)
                timings["traffic_done"] = time.monotonic() - t0
                streams = wait_for_final_scrape(prometheus, demo, job)
                timings["data_in_prometheus"] = time.monotonic() - t0
                say(f"prometheus has all {streams:g} streams")
                end = time.time()
                start = first_sample_time(prometheus, job, demo.started_at or end - duration, end)
                yield Run(prometheus, demo, job, start, end, streams, timings)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = [
    "JOB",
    "Demo",
    "HarnessError",
    "Prometheus",
    "PrometheusAPI",
    "Run",
    "counter_sum",
    "demo_with_prometheus",
    "finite_values",
    "first_sample_time",
    "free_port",
    "load_dashboards",
    "prometheus_binary",
    "prometheus_config",
    "rule_file",
    "recording_rule_file",
]
