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


@pytest.mark.parametrize("args", [(), ("demo",), ("fault-server",), ("dashboards", "export"), ("deploy", "export"), ("doctor",)])
def test_help(args):
    result = cli(*args, "--help")
    assert result.returncode == 0
    assert "usage: llm-stream-otel" in result.stdout
    if args:
        assert "examples:" in result.stdout


# --- errors, not tracebacks (issue 19) ---------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("--prometheus-port", "99999"), "argument --prometheus-port: 99999 is out of range"),
        (("--prometheus-port", "-1"), "argument --prometheus-port: -1 is out of range"),
        (("--concurrency", "0"), "argument --concurrency: 0 is out of range: must be 1 or more"),
        (("--streams", "0"), "argument --streams: 0 is out of range: must be 1 or more"),
        (("--streams", "-3"), "argument --streams: -3 is out of range: must be 1 or more"),
        (("--streams", "many"), "argument --streams: 'many' is not a whole number"),
        (("--duration", "0"), "argument --duration: 0 is out of range"),
        (("--stall-threshold", "-1"), "argument --stall-threshold: -1 is out of range: must be a positive number of seconds"),
    ],
)
def test_demo_rejects_bad_values_like_argparse(args, message):
    result = cli("demo", *args, "--plain")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: llm-stream-otel demo" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    # It never got as far as a warning about a variable the user did not set.
    assert "OTEL_INSTRUMENTATION" not in result.stderr


def test_fault_server_on_a_busy_port_says_so():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("fault-server", "--port", str(port), timeout=30)
    assert result.returncode == 2
    assert f"error: 127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_fault_server_help_explains_faults_and_keys():
    out = cli("fault-server", "--help").stdout
    for fault in ("reset_mid_chunk", "reset_between", "cut_mid_chunk", "missing_terminator", "error_event",
                  "response_failed", "overloaded", "stall", "hang", "http_500"):
        assert f"\n  {fault}" in out
    for key in ("chunks=", "delay=", "first_delay=", "after=", "seconds=", "usage=", "retry_after_ms=", "first=", "type=",
                "cache_read=", "cache_creation="):
        assert f"\n  {key}" in out
    assert "over the server's lifetime" in out


def test_doctor_prints_each_warning_once():
    env = dict(os.environ, OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD="-3",
               OTEL_INSTRUMENTATION_LLM_STREAM_RETRY_WINDOW="soon")
    result = subprocess.run([CLI, "doctor"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("llm_stream_otel:")]
    assert len(warnings) == 2, result.stderr
    assert any("STALL_THRESHOLD='-3' must be a positive number" in w for w in warnings)
    assert any("RETRY_WINDOW='soon' is not a number" in w for w in warnings)


def test_a_bad_keyword_is_reported_as_the_keyword_not_the_variable(caplog):
    from llm_stream_otel.config import load_settings

    with caplog.at_level("WARNING", logger="llm_stream_otel"):
        settings = load_settings({"stall_threshold": -1}, environ={})
    assert settings.stall_threshold == 5.0
    assert "instrument() keyword stall_threshold=-1 must be a positive number" in caplog.text
    assert "OTEL_INSTRUMENTATION" not in caplog.text


def test_demo_without_the_demo_extra_names_the_extra(tmp_path: Path):
    """As after ``pip install .``: the extras' modules cannot be imported (hidden by an import hook)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('openai', 'rich', 'prometheus_client') or name.startswith('opentelemetry.sdk'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(hide))
    result = subprocess.run([CLI, "demo", "--streams", "1", "--plain"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "needs the 'demo' extra" in result.stderr
    assert "pip install 'llm-stream-otel[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_to_a_closed_pipe_is_not_a_traceback():
    """``llm-stream-otel doctor | head -1``: the reader leaves before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([CLI, "doctor"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 0
