"""The ``llm-stream-otel`` command, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CLI = shutil.which("llm-stream-otel", path=os.path.dirname(sys.executable))


def cli(*args, timeout=120):
    assert CLI, "llm-stream-otel is not installed next to this Python (pip install -e '.[test,demo]')"
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_and_prints_the_numbers():
    result = cli("demo", "--streams", "24", "--seed", "5", "--prometheus-port", "0", "--plain")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fault-injecting OpenAI-compatible server: http://127.0.0.1:" in out
    for label in ("streams", "truncation rate", "fix rate", "time to first chunk p95", "stalls", "retries (sdk)", "retries (application)", "retries (helper)"):
        assert label in out
    streams = int(next(line.split()[-1] for line in out.splitlines() if line.startswith("streams")))
    assert streams >= 24  # retries add attempts
    assert "sk-demo-not-a-real-key" not in out


def test_demo_serves_prometheus_and_stops_cleanly_on_ctrl_c():
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "demo", "--duration", "30", "--prometheus-port", str(port), "--plain", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        body = ""
        deadline = time.time() + 30
        while time.time() < deadline and "llm_stream_outcomes_total" not in body:
            time.sleep(0.5)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert "llm_stream_outcomes_total{" in body
        assert "gen_ai_client_operation_time_to_first_chunk_seconds_bucket{" in body
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted" in out and "truncation rate" in out
    assert "Traceback" not in err


def test_busy_prometheus_port_gets_a_clear_message():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("demo", "--streams", "1", "--prometheus-port", str(port))
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_doctor():
    result = cli("doctor")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "llm_stream = llm_stream_otel:LLMStreamInstrumentor" in out
    assert "chat.completions.completions.Completions.create" in out or "chat.completions.Completions.create" in out
    assert "Responses.create" in out
    assert "stall_threshold" in out and "OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD" in out


def test_doctor_reports_bad_config_as_default():
    env = dict(os.environ, OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD="-3")
    result = subprocess.run([CLI, "doctor"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0
    assert "stall_threshold        5.0" in result.stdout
    assert "must be a positive number" in result.stderr


def test_dashboards_export(tmp_path: Path):
    result = cli("dashboards", "export", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "llm-streams-overview.json" in files and "alerts/llm-stream-alerts.yaml" in files
    dashboard = json.loads((tmp_path / "out" / "llm-streams-overview.json").read_text())
    assert dashboard["panels"]


@pytest.mark.parametrize("args", [(), ("demo",), ("fault-server",), ("dashboards", "export"), ("doctor",)])
def test_help(args):
    result = cli(*args, "--help")
    assert result.returncode == 0
    assert "usage: llm-stream-otel" in result.stdout
    if args:
        assert "examples:" in result.stdout
