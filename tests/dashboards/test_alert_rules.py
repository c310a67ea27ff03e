"""Prometheus alert rules, their promtool unit tests, and the Grafana copy."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

from llm_stream_otel import series as names  # noqa: E402
from tools.dashboards import alerts, queries, thresholds  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "alerts" / "llm-stream-alerts.yaml"
RULE_TESTS = ROOT / "dashboards" / "alerts" / "tests" / "llm-stream-alerts.test.yaml"
GRAFANA_RULES = ROOT / "deploy" / "grafana" / "provisioning" / "alerting" / "llm-stream-alerts.yaml"
README = ROOT / "dashboards" / "README.md"

ALERT_NAMES = [
    "LLMStreamTruncationRateHigh",
    "LLMStreamFixRateLow",
    "LLMStreamTimeToFirstChunkHigh",
    "LLMStreamStallRateHigh",
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=ROOT)


def _prom_rules():
    return yaml.safe_load(RULES.read_text())["groups"][0]["rules"]


def _grafana_rules():
    return yaml.safe_load(GRAFANA_RULES.read_text())["groups"][0]["rules"]


def test_committed_rule_files_are_generated():
    for rel, text in alerts.alert_files().items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, (
            f"{rel} is stale: run PYTHONPATH=src python -m tools.dashboards.build "
            "--out dashboards/ --deploy deploy/"
        )


def test_promtool_check_rules(promtool):
    r = _run(promtool, "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in r.stdout


def test_promtool_unit_tests(promtool):
    r = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_each_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(ALERT_NAMES)
    assert quiet == set(ALERT_NAMES)


def test_rules_shape():
    rules = _prom_rules()
    assert [r["alert"] for r in rules] == ALERT_NAMES
    readme = README.read_text(encoding="utf-8") if README.exists() else ""
    for r in rules:
        assert r["labels"]["severity"] in {"page", "warning", "info"}
        ann = r["annotations"]
        assert ann["summary"] and ann["description"]
        anchor = r["alert"].lower()
        assert ann["runbook_url"].endswith("dashboards/README.md#" + anchor)
        assert re.search(rf"^#+ {r['alert']}\s*$", readme, re.M), f"README has no '{r['alert']}' heading"
        assert re.fullmatch(r"\d+[smh]", r["for"])
    by_name = {r["alert"]: r for r in rules}
    assert by_name["LLMStreamTruncationRateHigh"]["labels"]["severity"] == "page"


def test_rules_use_thresholds_and_known_names():
    by_name = {r["alert"]: r for r in _prom_rules()}
    cfg = {
        "LLMStreamTruncationRateHigh": (thresholds.TRUNCATION_RATE, ">"),
        "LLMStreamFixRateLow": (thresholds.FIX_RATE, "<"),
        "LLMStreamTimeToFirstChunkHigh": (thresholds.TTFC_P95, ">"),
        "LLMStreamStallRateHigh": (thresholds.STALL_RATE, ">"),
    }
    known = set(names.all_series_names())
    for name, (c, op) in cfg.items():
        expr = by_name[name]["expr"]
        assert f") {op} {c.threshold:g}\n" in expr, name
        assert f"[{c.window}]" in expr and f">= {c.min_events}" in expr, name
        assert by_name[name]["for"] == c.for_
        assert by_name[name]["labels"]["severity"] == c.severity
        assert set(queries.metric_names(expr)) <= known, name
    fix = by_name["LLMStreamFixRateLow"]["expr"]
    assert names.RECOVERIES in fix and f'{names.IS_RETRY}="false"' in fix


def test_grafana_rules_mirror_prometheus_rules():
    prom = {r["alert"]: r for r in _prom_rules()}
    doc = yaml.safe_load(GRAFANA_RULES.read_text())
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    assert group["folder"] and group["interval"] and group["orgId"] == 1
    uids = set()
    for rule in group["rules"]:
        p = prom[rule["title"]]
        uids.add(rule["uid"])
        assert len(rule["uid"]) <= 40
        assert rule["for"] == p["for"] and rule["labels"] == p["labels"]
        assert rule["annotations"]["runbook_url"] == p["annotations"]["runbook_url"]
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs
        a, c = refs["A"], refs[rule["condition"]]
        assert a["datasourceUid"] == thresholds.GRAFANA_PROMETHEUS_UID
        assert a["model"]["instant"] is True
        assert c["datasourceUid"] == "__expr__" and c["model"]["type"] == "threshold"
        assert c["model"]["expression"] == "A"
        evaluator = c["model"]["conditions"][0]["evaluator"]
        m = re.search(r"\) ([<>]) ([0-9.]+)\n", p["expr"])
        assert evaluator["type"] == {">": "gt", "<": "lt"}[m.group(1)]
        assert evaluator["params"] == [float(m.group(2))]
        assert queries.metric_names(a["model"]["expr"]) == queries.metric_names(p["expr"])
        assert rule["noDataState"] in {"OK", "NoData", "Alerting"}
    assert len(uids) == len(ALERT_NAMES)
    assert [t for t, _ in queries.alert_expressions(GRAFANA_RULES)] == ALERT_NAMES


def test_grafana_rule_queries_parse(promtool, tmp_path):
    rules = [{"record": f"grafana:rule_{i}", "expr": e}
             for i, (_, e) in enumerate(queries.alert_expressions(GRAFANA_RULES))]
    path = tmp_path / "grafana-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    r = _run(promtool, "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


RECORDING = ROOT / "dashboards" / "alerts" / "llm-stream-recording-rules.yaml"
RECORDING_TESTS = ROOT / "dashboards" / "alerts" / "tests" / "llm-stream-recording-rules.test.yaml"


def test_recording_rules_pass_promtool(promtool):
    from tools.dashboards import recording

    r = _run(promtool, "check", "rules", str(RECORDING))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(recording.rules())} rules found" in r.stdout
    r = _run(promtool, "test", "rules", str(RECORDING_TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_recording_rules_follow_level_metric_operations():
    from tools.dashboards import recording

    records = dict(queries.alert_expressions(RECORDING))
    assert records == dict(recording.rules())
    for name, expr in records.items():
        level, metric, ops = name.split(":")
        assert level in {"job", "job_le", "fleet"} and ops.endswith("rate5m"), name
        assert re.fullmatch(r"[a-z_]+", metric), name
        if level != "fleet":  # grouped by exactly the level's labels
            assert f"by ({', '.join(level.split('_'))})" in expr or expr.startswith(("(", "histogram_quantile")), name
    # every service-level and fleet-wide ratio / quantile has its raw twin (used by the fleet test)
    ratios = {n for n in records if n.split(":")[2].startswith(("ratio_", "p"))}
    assert ratios == set(recording.raw_equivalents())
    for metric in ("llm_stream_truncation", "llm_stream_fix", "llm_stream_stalls_per_stream"):
        assert {f"job:{metric}:ratio_rate5m", f"fleet:{metric}:ratio_rate5m"} <= ratios
