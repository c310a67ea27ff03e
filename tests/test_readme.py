"""The README stays true: its names exist in the code, its commands run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from llm_stream_otel import config
from llm_stream_otel import semconv as t

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(name: str) -> str:
    start = README.index(f"\n## {name}\n")
    end = README.find("\n## ", start + 4)
    return README[start:end]


def between(marker: str) -> str:
    return README.split(f"<!-- {marker}:begin -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]


def code(block: str) -> str:
    return re.search(r"```\w*\n(.*?)```", block, re.S).group(1)


def test_every_metric_in_the_readme_is_emitted_and_every_emitted_metric_is_documented():
    rows = [line for line in section("Metrics").splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`([^`]+)`", row)[0]: re.findall(r"`([^`]+)`", row)[1] for row in rows}
    assert set(documented) == set(t.METRICS)
    from llm_stream_otel.series import METRICS as PROMETHEUS

    assert documented == {name: PROMETHEUS[name] for name in documented}


def test_every_configuration_variable_is_real():
    documented = set(re.findall(r"`(OTEL_INSTRUMENTATION_[A-Z_]+)`", section("Configuration")))
    assert documented == {
        config.ENV_STALL_THRESHOLD,
        config.ENV_RETRY_WINDOW,
        config.ENV_CAPTURE_CONTENT,
        config.ENV_MAX_ATTRIBUTE_VALUES,
        config.ENV_METRICS_FAST_PATH,
        config.ENV_SPAN_FAST_PATH,
        config.ENV_STRICT,
        config.ENV_APP_RETRIES,
        config.ENV_INCLUDE_USAGE,
    }


def test_outcomes_and_reasons_match_the_code():
    text = section("Outcomes and truncation reasons")
    assert set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M)) == set(t.OUTCOMES) | set(t.TRUNCATION_REASONS)


def test_first_lines_give_the_two_commands():
    first = code(README)
    install_demo, tests = [line for line in first.splitlines() if line.strip()]
    assert '.venv/bin/pip install ".[demo]"' in install_demo and "llm-stream-otel demo" in install_demo
    assert tests.split("#")[0].strip() == "bash .ci/run"
    assert "demo = [" in (ROOT / "pyproject.toml").read_text()
    assert "pytest" in (ROOT / ".ci" / "run").read_text()


def test_quickstart_runs(server, tmp_path):
    """Run the README's app under the README's opentelemetry-instrument command."""
    (tmp_path / "app.py").write_text(code(between("app")))
    command = [line for line in code(between("quickstart")).splitlines() if line.startswith("opentelemetry-instrument")][0]
    args = command.split()
    args[0] = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    args[args.index("python")] = sys.executable
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-readme-SECRET", OTEL_SERVICE_NAME="readme-app")
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"name": "chat gpt-4o-mini"' in result.stdout
    assert '"llm.stream.outcome": "completed"' in result.stdout
    assert '"name": "llm.stream.outcomes"' in result.stdout
    assert "sk-readme-SECRET" not in result.stdout + result.stderr



def test_the_metrics_table_says_exactly_which_metrics_carry_error_type(instrumented, client):
    """A cut stream with a stall (slow chunks), then its application retry, which
    completes with usage: every metric gets points; those with ``error.type`` are the
    ones the table says (token usage never carries it: see the series budget)."""
    from streaming import consume

    prompt = "readme error.type"
    _, exc = consume(client, "chat", "missing_terminator;after=3;delay=0.35", prompt=prompt)
    assert exc is None  # cut silently
    _, exc = consume(client, "chat", "none;usage=1", prompt=prompt)
    assert exc is None
    rows = [line for line in section("Metrics").splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`([^`]+)`", row)[0] for row in rows if "`error.type`" in row}
    carrying = set()
    for name in t.METRICS:
        if name == t.METRIC_INTERNAL_ERRORS:
            continue  # our own bugs: nothing to record here (and never error.type)
        sets = instrumented.attribute_sets(name)
        assert sets, f"{name} recorded nothing"
        if any(t.ERROR_TYPE in attrs for attrs in sets):
            carrying.add(name)
    assert t.METRIC_INTERNAL_ERRORS not in documented
    assert carrying == documented
    assert t.METRIC_TOKEN_USAGE not in documented
