"""Issue 11, item 3: a stream still open when the interpreter exits keeps its span.

Each exit path runs in a subprocess against the session fault server, with a
real BatchSpanProcessor and a periodic metric reader exporting to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

APP = os.path.join(os.path.dirname(__file__), "apps", "exit_app.py")
MODES = [
    "module_level",
    "sys_exit",
    "unhandled_exception",
    "long_lived_object",
    "function_break",
    "cycle_helper",
]


def run_app(server, tmp_path, mode: str, *flags: str) -> list:
    out = tmp_path / f"{mode}.jsonl"
    env = dict(os.environ, BASE_URL=server.base_url, EXIT_APP_OUT=str(out))
    env.pop("OTEL_INSTRUMENTATION_LLM_STREAM_STRICT", None)
    proc = subprocess.run([sys.executable, APP, mode, *flags], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == (1 if mode == "unhandled_exception" else 0), proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def our_spans(records: list) -> list:
    return [r for r in records if r.get("scope") == "llm_stream_otel" and "span" in r]


@pytest.mark.parametrize("mode", MODES)
def test_stream_open_at_exit_is_exported_as_abandoned(server, tmp_path, mode):
    records = run_app(server, tmp_path, mode)
    spans = our_spans(records)
    assert len(spans) == 1, records
    attributes = spans[0]["attributes"]
    assert attributes["llm.stream.outcome"] == "abandoned"
    assert attributes["llm.stream.chunks"] >= 1
    outcomes = [r for r in records if r.get("metric") == "llm.stream.outcomes"]
    assert [o["attributes"]["llm.stream.outcome"] for o in outcomes] == ["abandoned"]


@pytest.mark.parametrize("mode", ["module_level", "long_lived_object"])
def test_still_open_at_exit_says_so(server, tmp_path, mode):
    """A stream nobody dropped is ended by the exit hook, which marks it."""
    (span,) = our_spans(run_app(server, tmp_path, mode))
    assert span["attributes"]["llm.stream.ended_at_exit"] is True


def test_instrumented_before_the_providers_were_built(server, tmp_path):
    (span,) = our_spans(run_app(server, tmp_path, "module_level", "instrument_first"))
    assert span["attributes"]["llm.stream.ended_at_exit"] is True


def test_with_break_under_openai_v2_outside_ours(server, tmp_path):
    pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    records = run_app(server, tmp_path, "openai_v2_outside")
    (span,) = our_spans(records)
    assert span["attributes"]["llm.stream.outcome"] == "abandoned"
