"""The committed dashboards: generated, documented, and on the contract's names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pathlib import Path

from llm_stream_otel import series as names
from tools.dashboards import queries, recording

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
DEPLOY = ROOT / "deploy"
DASHBOARD_FILES = ("llm-streams-overview.json", "llm-streams-model.json", "llm-streams-fleet.json")
FLEET_FILE = "llm-streams-fleet.json"  # built on the recording rules: no model/server labels

KNOWN_SERIES = set(names.all_series_names()) | {name for name, _ in recording.rules()}
KNOWN_LABELS = set(names.LABELS.values()) | {names.SERVICE_LABEL, "le"}


@pytest.fixture(scope="module")
def committed() -> dict:
    return {f: json.loads((DASHBOARDS / f).read_text(encoding="utf-8")) for f in DASHBOARD_FILES}


def _panels(committed):
    for fname, dash in committed.items():
        for panel in queries.iter_panels(dash):
            if panel["type"] != "row":
                yield fname, panel


def _sdk():
    if sys.version_info < (3, 11):
        pytest.skip("grafana-foundation-sdk needs Python >= 3.11")
    pytest.importorskip(
        "grafana_foundation_sdk",
        reason="grafana-foundation-sdk not installed (pip install 'grafana-foundation-sdk==1769699379!11.6.0')",
    )
    from tools.dashboards import build

    return build


def test_committed_json_equals_generated(committed):
    build = _sdk()
    generated = build.build_all()
    assert sorted(generated) == sorted(DASHBOARD_FILES)
    for fname, dash in generated.items():
        text = (DASHBOARDS / fname).read_text(encoding="utf-8")
        assert text == build.render(dash), (
            f"{fname} is stale: run PYTHONPATH=src python -m tools.dashboards.build "
            "--out dashboards/ --deploy deploy/"
        )


def test_generator_check_mode_is_clean():
    build = _sdk()
    assert build.main(["--out", str(DASHBOARDS), "--deploy", str(DEPLOY), "--check"]) == 0


def test_generator_writes_all_files(tmp_path):
    build = _sdk()
    assert build.main(["--out", str(tmp_path / "d"), "--deploy", str(tmp_path / "p")]) == 0
    for f in DASHBOARD_FILES:
        assert (tmp_path / "d" / f).read_text() == (DASHBOARDS / f).read_text()
    assert (tmp_path / "d" / "alerts" / "llm-stream-alerts.yaml").exists()
    assert (tmp_path / "p" / "grafana" / "provisioning" / "alerting" / "llm-stream-alerts.yaml").exists()
    # --check on what it just wrote: clean
    assert build.main(["--out", str(tmp_path / "d"), "--deploy", str(tmp_path / "p"), "--check"]) == 0
    (tmp_path / "d" / DASHBOARD_FILES[0]).write_text("{}")
    assert build.main(["--out", str(tmp_path / "d"), "--check"]) == 1


def test_cli_module_runs(tmp_path):
    _sdk()
    env_path = str(ROOT / "src")
    r = subprocess.run(
        [sys.executable, "-m", "tools.dashboards.build", "--out", str(tmp_path)],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(DASHBOARD_FILES)


def test_every_panel_has_description_unit_thresholds_and_queries(committed):
    count = 0
    for fname, panel in _panels(committed):
        count += 1
        where = f"{fname}: {panel.get('title')!r}"
        assert panel.get("title"), where
        assert len(panel.get("description", "")) >= 40, f"{where}: no real description"
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{where}: no unit"
        steps = defaults.get("thresholds", {}).get("steps")
        assert steps and steps[0]["value"] is None, f"{where}: no thresholds"
        assert panel.get("targets"), f"{where}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", where
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], where
    assert count >= 20


def test_queries_only_use_names_from_names_py(committed):
    used = queries.referenced_metrics(queries.all_queries(committed))
    unknown = set(used) - KNOWN_SERIES
    assert not unknown, {u: used[u] for u in unknown}
    # every instrument of the contract shows up somewhere
    bases = {names.METRICS[o] for o in names.METRICS} - names.NOT_ON_DASHBOARDS
    shown = {b for b in bases if any(s.startswith(b) for s in used)}
    assert shown == bases


def test_queries_only_use_known_labels(committed):
    import re

    for title, expr in queries.all_queries(committed):
        for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for lbl in filter(None, (x.strip() for x in m.group(1).split(","))):
                assert lbl in KNOWN_LABELS, (title, lbl)
        for m in re.finditer(r"\{([^}]*)\}", expr):
            for lbl in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(1)):
                assert lbl in KNOWN_LABELS, (title, lbl)


def test_no_unsubstituted_variables_left(committed):
    for title, expr in queries.all_queries(committed):
        assert "$" not in expr, (title, expr)


def test_template_variables(committed):
    for fname, dash in committed.items():
        var = {v["name"]: v for v in dash["templating"]["list"]}
        if fname == FLEET_FILE:
            assert list(var) == ["datasource", "job"]
            assert var["job"]["multi"] and "job:llm_stream_outcomes:rate" in var["job"]["query"]
            continue
        assert list(var) == ["datasource", "job", "provider", "model", "server"], fname
        assert var["datasource"]["type"] == "datasource" and var["datasource"]["query"] == "prometheus"
        assert names.SERVICE_LABEL in var["job"]["query"]
        assert names.MODEL in var["model"]["query"]
        assert names.SERVER in var["server"]["query"]
    over = {v["name"]: v for v in committed["llm-streams-overview.json"]["templating"]["list"]}
    drill = {v["name"]: v for v in committed["llm-streams-model.json"]["templating"]["list"]}
    assert over["model"]["multi"] and over["model"]["includeAll"]
    assert not drill["model"]["multi"] and not drill["server"]["multi"]


def test_every_query_is_filtered_by_all_variables(committed):
    for fname, dash in committed.items():
        for panel in queries.iter_panels(dash):
            for target in panel.get("targets", []):
                if fname == FLEET_FILE:  # per service: $job; fleet-wide stats: every service
                    assert "$job" in target["expr"] or target["expr"].startswith("fleet:"), (panel["title"], target)
                    continue
                for var in ("$job", "$provider", "$model", "$server"):
                    assert var in target["expr"], (fname, panel["title"], var)


def test_links_between_dashboards(committed):
    over = committed["llm-streams-overview.json"]
    drill = committed["llm-streams-model.json"]
    assert over["uid"] == "llm-streams-overview" and drill["uid"] == "llm-streams-model"
    assert any(l["url"].startswith("/d/llm-streams-model") and l["includeVars"] and l["keepTime"]
               for l in over["links"])
    assert any(l["url"].startswith("/d/llm-streams-overview") and l["keepTime"] for l in drill["links"])
    fleet = committed[FLEET_FILE]
    assert fleet["uid"] == "llm-streams-fleet"
    assert any(l["url"].startswith("/d/llm-streams-fleet") and l["keepTime"] for l in over["links"])
    assert any(l["url"].startswith("/d/llm-streams-overview") for l in fleet["links"])
    data_links = [
        link
        for panel in queries.iter_panels(over)
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert data_links, "overview has no drill-down data links"
    for link in data_links:
        assert link["url"].startswith("/d/llm-streams-model")
        assert f"__field.labels.{names.MODEL}" in link["url"]
        assert f"__field.labels.{names.SERVER}" in link["url"]


def test_required_overview_panels(committed):
    titles = [p["title"] for _, p in _panels({"o": committed["llm-streams-overview.json"]})]
    for required in (
        "Stream volume",
        "Truncation rate",
        "Fix rate",
        "Outcomes by outcome and truncation reason",
        "Time to first chunk p50 / p95 / p99",
        "Chunk interval heatmap",
        "Stalls per minute",
        "Retries by layer",
        "Token usage (tokens/s)",
    ):
        assert required in titles, required


def test_threshold_lines_match_alert_thresholds(committed):
    from tools.dashboards import thresholds as t

    panels = {p["title"]: p for _, p in _panels({"o": committed["llm-streams-overview.json"]})
              if p["type"] == "timeseries"}

    def line(title):
        d = panels[title]["fieldConfig"]["defaults"]
        assert d["custom"]["thresholdsStyle"]["mode"] != "off", title
        return [s["value"] for s in d["thresholds"]["steps"]][1:]

    assert line("Truncation rate") == [t.TRUNCATION_RATE.threshold]
    assert line("Fix rate") == [t.FIX_RATE.threshold]
    assert line("Time to first chunk p50 / p95 / p99") == [t.TTFC_P95.threshold]


def test_heatmap_reads_buckets(committed):
    heatmaps = [p for _, p in _panels(committed) if p["type"] == "heatmap"]
    assert heatmaps
    for p in heatmaps:
        (target,) = p["targets"]
        assert target["format"] == "heatmap"
        assert any(f"{b}_bucket" in target["expr"] for b in (names.CHUNK_INTERVAL, names.IDLE_BEFORE_END)) and "by (le)" in target["expr"]
        assert p["options"]["calculate"] is False


def test_queries_parse_with_promtool(committed, promtool, tmp_path):
    """Every dashboard query (variables substituted) is valid PromQL."""
    import yaml

    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(queries.all_queries(committed))
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
