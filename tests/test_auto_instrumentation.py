"""The zero-code path: ``opentelemetry-instrument python app.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).parent / "apps" / "stream_app.py"


def run_instrumented(server, **env_overrides):
    tool = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    if tool is None:
        pytest.fail("opentelemetry-instrument is not installed next to this Python (pip install '.[test]')")
    env = dict(os.environ)
    env.update(
        APP_BASE_URL=server.base_url,
        OTEL_SERVICE_NAME="stream-app",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
        # other instrumentations that may be installed (the coexistence extra) stay out of these counts
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="openai,httpx,httpx2",
    )
    env.update(env_overrides)
    return subprocess.run(
        [tool, sys.executable, str(APP)], env=env, capture_output=True, text=True, timeout=120, check=True
    )


def test_opentelemetry_instrument_produces_spans_and_metrics(server):
    result = run_instrumented(server)
    out = result.stdout
    assert "APP: stream cut" in out and "APP: stream ok" in out
    assert out.count('"name": "chat gpt-app"') == 2, out[-3000:]
    assert '"llm.stream.outcome": "truncated"' in out
    assert '"llm.stream.truncation.reason": "connection_reset"' in out
    assert '"llm.stream.outcome": "completed"' in out
    # the second call repeats the cut one: an application retry that recovered
    assert '"llm.stream.is_retry": true' in out
    assert '"name": "llm.stream.outcomes"' in out  # metrics flushed at exit
    assert '"name": "gen_ai.client.operation.time_to_first_chunk"' in out
    assert "sk-app-SECRET" not in out + result.stderr
    assert "hello from the app" not in out + result.stderr


def test_disable_env_var_turns_it_off(server):
    result = run_instrumented(server, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="llm_stream,openai,httpx,httpx2")
    assert "APP: stream ok" in result.stdout
    assert '"llm.stream.outcome"' not in result.stdout
    assert '"chat gpt-app"' not in result.stdout
