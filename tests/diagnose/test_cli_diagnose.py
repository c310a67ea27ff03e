"""``llm-stream-otel diagnose`` arguments and errors: usage errors exit 2, no Prometheus exits 1, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_stream_otel.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_has_an_example():
    result = cli("diagnose", "--help")
    assert result.returncode == 0
    assert "usage: llm-stream-otel diagnose" in result.stdout and "--prometheus URL" in result.stdout
    assert "examples:" in result.stdout and "llm-stream-otel diagnose --prometheus http://localhost:9090" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "the following arguments are required: --prometheus"),
        (("--prometheus", "localhost:9090"), "argument --prometheus: 'localhost:9090' is not an http(s):// URL"),
        (("--prometheus", "http://x", "--since", "soon"), "argument --since: 'soon' is not a duration like 90s, 15m, 1h"),
        (("--prometheus", "http://x", "--since", "0s"), "argument --since: 0s is out of range"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message):
    result = cli("diagnose", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: llm-stream-otel diagnose" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_prometheus_is_a_clean_error():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("diagnose", "--prometheus", f"http://127.0.0.1:{port}", "--since", "15m")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach Prometheus at http://127.0.0.1:{port}")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_not_a_prometheus_is_a_clean_error():
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = cli("diagnose", "--prometheus", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "HTTP 404" in result.stderr
    assert "Traceback" not in result.stderr
