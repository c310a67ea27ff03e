"""Release-ready packaging: the wheel and sdist build, `twine check` accepts
them, and the wheel installed alone in a fresh venv does what the README says."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from llm_stream_otel.version import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: hatchling comes from the test extra, so no index is needed.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("llm_stream_otel-*.whl")
    return wheel


def test_twine_check_accepts_wheel_and_sdist(dist: Path):
    files = sorted(str(p) for p in dist.iterdir())
    assert len(files) == 2, files
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_metadata_and_contents(dist: Path):
    wheel = _wheel(dist)
    assert wheel.name.startswith(f"llm_stream_otel-{__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = email.message_from_bytes(zf.read(f"llm_stream_otel-{__version__}.dist-info/METADATA"))
    assert meta["Version"] == __version__  # one version source: version.py
    assert meta["License-Expression"] == "Apache-2.0"
    assert f"llm_stream_otel-{__version__}.dist-info/licenses/LICENSE" in names
    assert "llm_stream_otel/py.typed" in names
    assert "llm_stream_otel/_bundled/deploy/docker-compose.yaml" in names
    assert "llm_stream_otel/_bundled/dashboards/llm-streams-overview.json" in names
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    tested = sorted(re.findall(r"Programming Language :: Python :: (3\.\d+)$", "\n".join(classifiers), re.M))
    assert tested == ["3.11", "3.12", "3.13"]
    assert "Typing :: Typed" in classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    from tools.dashboards.thresholds import RUNBOOK_BASE_URL

    assert RUNBOOK_BASE_URL.startswith(urls["Repository"] + "/")
    assert (ROOT / "CHANGELOG.md").read_text().count(f"## [{__version__}]") == 1
    assert "Apache License" in (ROOT / "LICENSE").read_text()


# What users run, and nothing else: maintainer tools (tools/: dashboard generators,
# previews, local Prometheus) and test support (tests/support/) stay out of the wheel.
WHEEL_MODULES = {
    "": {"__init__", "version", "semconv", "series", "config", "guard", "instrumentor", "resilient",
         "bundled", "cli", "doctor"},
    "stream": {"__init__", "monitor", "outcome", "call", "record", "proxy", "telemetry", "wrapper",
               "http_facts", "connections", "handoff", "exit_hook", "first_pull", "span_fast_path", "span_start", "metric_attributes"},
    "metrics": {"__init__", "instruments", "histogram_merge", "sdk_fast_path", "ending_buffer", "cardinality"},
    "retries": {"__init__", "attempts", "fingerprint", "scope"},
    "providers": {"__init__", "base", "stainless"},
    "providers/openai": {"__init__", "patches", "request", "chunks", "wire", "include_usage"},
    "demo": {"__init__", "fault_server", "fault_plan", "run", "phases", "scenarios", "summary", "otel_setup",
             "anthropic_events", "gemini_events", "gemini_scenarios"},
    "diagnose": {"__init__", "command", "prometheus", "render", "rules"},
}


def test_the_wheel_holds_only_what_users_run(dist: Path):
    with zipfile.ZipFile(_wheel(dist)) as zf:
        modules = [n[len("llm_stream_otel/"):-3] for n in zf.namelist() if n.startswith("llm_stream_otel/") and n.endswith(".py")]
    found: dict = {}
    for module in modules:
        folder, _, name = module.rpartition("/")
        found.setdefault(folder, set()).add(name)
    # Providers beyond openai bring their own subpackage; each is a package.
    extra_providers = {f for f in found if f.startswith("providers/") and f != "providers/openai"}
    for folder in extra_providers:
        assert "__init__" in found.pop(folder), folder
    assert found == WHEEL_MODULES
    assert not any(n.startswith(("tools/", "tests/")) for n in zipfile.ZipFile(_wheel(dist)).namelist())


def test_sdist_holds_the_sources_and_license(dist: Path):
    import tarfile

    (sdist,) = dist.glob("llm_stream_otel-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "src/llm_stream_otel/version.py",
            "deploy/docker-compose.yaml", "dashboards/llm-streams-overview.json"} <= names
    assert not any(n.startswith(".venv") for n in names)


@pytest.fixture(scope="module")
def fresh_venv(dist: Path, tmp_path_factory) -> Path:
    """A new venv with only the wheel and its ``instruments`` extra, as the README's install line."""
    home = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=True).create(home / "venv")
    python = home / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{_wheel(dist)}[instruments]", "opentelemetry-distro"],
        check=True, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    return home / "venv" / "bin"


def test_wheel_in_a_fresh_venv_exports_the_stack_and_names_missing_extras(fresh_venv: Path, tmp_path: Path):
    cli = str(fresh_venv / "llm-stream-otel")
    result = subprocess.run([cli, "deploy", "export", str(tmp_path / "stack")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    compose = (tmp_path / "stack" / "deploy" / "docker-compose.yaml").read_text()
    # Every host path the compose file mounts exists in the export.
    for mount in re.findall(r"- (\.\.?/[^:]+):", compose):
        assert (tmp_path / "stack" / "deploy" / mount).exists(), mount
    assert (tmp_path / "stack" / "dashboards" / "alerts" / "llm-stream-alerts.yaml").is_file()

    doctor = subprocess.run([cli, "doctor"], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stderr
    assert f"llm-stream-otel                          {__version__}" in doctor.stdout
    assert "llm_stream = llm_stream_otel:LLMStreamInstrumentor" in doctor.stdout

    demo = subprocess.run([cli, "demo", "--streams", "1", "--plain"], capture_output=True, text=True, timeout=60)
    assert demo.returncode == 2
    assert "needs the 'demo' extra" in demo.stderr and "Traceback" not in demo.stderr


def test_wheel_in_a_fresh_venv_runs_the_quickstart(fresh_venv: Path, tmp_path: Path, server):
    from test_readme import between, code

    (tmp_path / "app.py").write_text(code(between("app")))
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-test", OTEL_SERVICE_NAME="wheel-app")
    result = subprocess.run(
        [str(fresh_venv / "opentelemetry-instrument"), "--traces_exporter", "console", "--metrics_exporter", "console",
         "--logs_exporter", "none", str(fresh_venv / "python"), "app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"llm.stream.outcome": "completed"' in result.stdout
