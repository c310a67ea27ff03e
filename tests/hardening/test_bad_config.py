"""Bad configuration never breaks the app (issue 8).

Negative, zero, non-numeric, non-finite and fractional values of every
setting, from the environment or from ``instrument(**kwargs)``: a warning
naming the setting, the default in effect, and never an exception, neither
at import nor at instrument time (in-process and under
``opentelemetry-instrument``). Empty values mean "unset" (no warning).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel.config import (
    DEFAULT_MAX_ATTRIBUTE_VALUES,
    DEFAULT_RETRY_WINDOW,
    DEFAULT_STALL_THRESHOLD,
    ENV_CAPTURE_CONTENT,
    ENV_MAX_ATTRIBUTE_VALUES,
    ENV_RETRY_WINDOW,
    ENV_STALL_THRESHOLD,
)
from otel_helpers import make_telemetry

NUMBERS = {
    ENV_STALL_THRESHOLD: ("stall_threshold", DEFAULT_STALL_THRESHOLD),
    ENV_RETRY_WINDOW: ("retry_window", DEFAULT_RETRY_WINDOW),
    ENV_MAX_ATTRIBUTE_VALUES: ("max_attribute_values", DEFAULT_MAX_ATTRIBUTE_VALUES),
}
BAD_NUMBERS = ["-1", "0", "-0.0", "abc", "5s", "nan", "inf", "-inf", "1e999", "0x10", "None", "[1]", "1,5"]
BAD_BOOLEANS = ["maybe", "2", "tru", "on off"]
EMPTY = ["", "   "]


def _settings(monkeypatch: Any, env: dict, **kwargs: Any) -> Any:
    for name in list(NUMBERS) + [ENV_CAPTURE_CONTENT]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            **kwargs)
    try:
        return instrumentor.telemetry.settings
    finally:
        instrumentor.uninstrument()


def _our_warnings(caplog: Any) -> list:
    return [r for r in caplog.records if r.name.startswith("llm_stream_otel") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("env_name", list(NUMBERS))
def test_bad_numeric_env_value(monkeypatch, caplog, env_name, value):
    caplog.set_level(logging.WARNING)
    if env_name == ENV_MAX_ATTRIBUTE_VALUES and value == "-0.0":
        value = "2.5"  # a fraction is what is bad for a count
    settings = _settings(monkeypatch, {env_name: value})
    attribute, default = NUMBERS[env_name]
    assert getattr(settings, attribute) == default
    warnings = _our_warnings(caplog)
    assert len(warnings) == 1 and env_name in warnings[0].getMessage(), [r.getMessage() for r in warnings]


@pytest.mark.parametrize("value", BAD_BOOLEANS)
def test_bad_boolean_env_value(monkeypatch, caplog, value):
    caplog.set_level(logging.WARNING)
    settings = _settings(monkeypatch, {ENV_CAPTURE_CONTENT: value})
    assert settings.capture_content is False
    warnings = _our_warnings(caplog)
    assert len(warnings) == 1 and ENV_CAPTURE_CONTENT in warnings[0].getMessage()


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("1", True), ("SPAN_ONLY", True), ("span_and_event", True), ("EVENT_ONLY", False),
     ("NO_CONTENT", False), ("false", False)],
)
def test_capture_content_accepts_booleans_and_util_genai_modes(monkeypatch, caplog, value, expected):
    """opentelemetry-util-genai (used by openai-v2) reads the same variable as a mode
    (NO_CONTENT / SPAN_ONLY / EVENT_ONLY / SPAN_AND_EVENT): one value must serve both."""
    caplog.set_level(logging.WARNING)
    assert _settings(monkeypatch, {ENV_CAPTURE_CONTENT: value}).capture_content is expected
    assert _our_warnings(caplog) == []


@pytest.mark.parametrize("value", EMPTY)
def test_empty_env_values_mean_unset(monkeypatch, caplog, value):
    caplog.set_level(logging.WARNING)
    settings = _settings(monkeypatch, {name: value for name in list(NUMBERS) + [ENV_CAPTURE_CONTENT]})
    assert (settings.stall_threshold, settings.retry_window, settings.max_attribute_values, settings.capture_content) == (
        DEFAULT_STALL_THRESHOLD, DEFAULT_RETRY_WINDOW, DEFAULT_MAX_ATTRIBUTE_VALUES, False)
    assert _our_warnings(caplog) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stall_threshold": -5},
        {"stall_threshold": "abc"},
        {"stall_threshold": float("nan")},
        {"stall_threshold": [1]},
        {"retry_window": 0},
        {"retry_window": object()},
        {"max_attribute_values": 2.5},
        {"max_attribute_values": -3},
        {"capture_content": "maybe"},
        {"capture_content": 3},
    ],
    ids=lambda kw: "-".join(f"{k}={v!r}"[:40] for k, v in kw.items()),
)
def test_bad_keyword_values(monkeypatch, caplog, kwargs):
    caplog.set_level(logging.WARNING)
    settings = _settings(monkeypatch, {}, **kwargs)
    assert (settings.stall_threshold, settings.retry_window, settings.max_attribute_values, settings.capture_content) == (
        DEFAULT_STALL_THRESHOLD, DEFAULT_RETRY_WINDOW, DEFAULT_MAX_ATTRIBUTE_VALUES, False)
    assert len(_our_warnings(caplog)) == 1


def test_good_values_are_used(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    settings = _settings(monkeypatch, {ENV_STALL_THRESHOLD: " 2.5 ", ENV_RETRY_WINDOW: "60",
                                       ENV_MAX_ATTRIBUTE_VALUES: "7", ENV_CAPTURE_CONTENT: "TRUE"})
    assert (settings.stall_threshold, settings.retry_window, settings.max_attribute_values, settings.capture_content) == (
        2.5, 60.0, 7, True)
    assert _our_warnings(caplog) == []
    assert _settings(monkeypatch, {ENV_STALL_THRESHOLD: "-1"}, stall_threshold=1.5).stall_threshold == 1.5


def test_bad_environment_under_opentelemetry_instrument(server, tmp_path):
    """Zero-code path: import + instrument with every setting bad; the app runs, warnings only."""
    tool = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    if tool is None:
        pytest.skip("opentelemetry-instrument is not installed next to this Python")
    app = tmp_path / "app.py"
    app.write_text(
        "import openai\n"
        f"client = openai.OpenAI(base_url={server.base_url!r}, api_key='k', max_retries=0)\n"
        "chunks = list(client.chat.completions.create(model='m', stream=True,"
        " messages=[{'role': 'user', 'content': 'hi'}]))\n"
        "from llm_stream_otel import LLMStreamInstrumentor\n"
        "assert LLMStreamInstrumentor().is_instrumented_by_opentelemetry\n"
        "print('APP OK', len(chunks))\n"
    )
    env = dict(os.environ)
    env.update({
        ENV_STALL_THRESHOLD: "-3", ENV_RETRY_WINDOW: "soon", ENV_MAX_ATTRIBUTE_VALUES: "1.5",
        ENV_CAPTURE_CONTENT: "perhaps", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none", "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "",
    })
    result = subprocess.run([tool, sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "APP OK" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for name in (ENV_STALL_THRESHOLD, ENV_RETRY_WINDOW, ENV_MAX_ATTRIBUTE_VALUES, ENV_CAPTURE_CONTENT):
        assert name in result.stderr, (name, result.stderr[-2000:])


def test_import_with_bad_environment_never_raises():
    env = dict(os.environ, **{ENV_STALL_THRESHOLD: "x", ENV_MAX_ATTRIBUTE_VALUES: "-1"})
    code = "import llm_stream_otel, llm_stream_otel.instrumentor, llm_stream_otel.config; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
