"""queries.py: PromQL extraction helpers for the e2e test."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_stream_otel import series as names
from tools.dashboards import queries

ROOT = Path(__file__).resolve().parents[2]

TOY = {
    "panels": [
        {"type": "row", "title": "r", "panels": [
            {"title": "collapsed", "targets": [{"expr": 'sum(rate(a_total{job=~"$job"}[$__rate_interval]))'}]},
        ]},
        {"title": "p1", "targets": [
            {"expr": 'x{model=~"${model}", s=~"[[server]]"}[$__range]', "refId": "A"},
            {"expr": "hidden_metric", "hide": True},
            {"refId": "C"},
        ]},
    ]
}


def test_substitute_defaults_and_overrides():
    assert queries.substitute('m{a=~"$model"}[$__rate_interval]') == 'm{a=~".*"}[1m]'
    assert queries.substitute("${model:regex} [[server]] $__range", {"model": "gpt-4o"}) == "gpt-4o .* 5m"
    # $__rate_interval is not mistaken for $__range (longest name wins)
    assert queries.substitute("$__rate_interval", {"__range": "X"}) == "1m"


def test_substitute_unknown_variable_raises():
    with pytest.raises(KeyError, match="nope"):
        queries.substitute("m{a=~'$nope'}")


def test_all_queries_walks_rows_and_skips_hidden():
    got = queries.all_queries({"toy.json": TOY}, {"job": "svc"})
    assert got == [
        ("collapsed", 'sum(rate(a_total{job=~"svc"}[1m]))'),
        ("p1", 'x{model=~".*", s=~".*"}[5m]'),
    ]
    assert queries.all_queries(TOY) == queries.all_queries({"x": TOY})


@pytest.mark.parametrize(
    "expr, expected",
    [
        ('sum by (le, job) (rate(foo_bucket{le="1", job=~"a|b"}[5m]))', ["foo_bucket"]),
        ("histogram_quantile(0.95, sum by (le) (rate(a_bucket[1m]))) > 10", ["a_bucket"]),
        ("(a_total or 0 * b_total) / on (job) group_left (x) c_total", ["a_total", "b_total", "c_total"]),
        ('(sum(rate(x_total[1m])) or vector(0)) / sum(increase(y_total{q="a b"}[5m])) * 60', ["x_total", "y_total"]),
        ("a and b unless c offset 5m", ["a", "b", "c"]),
        ("1e3 * 2", []),
    ],
)
def test_metric_names(expr, expected):
    assert queries.metric_names(expr) == expected


def test_alert_expressions_prometheus_and_grafana():
    pytest.importorskip("yaml")
    prom = queries.alert_expressions(ROOT / "dashboards" / "alerts" / "llm-stream-alerts.yaml")
    graf = queries.alert_expressions(
        ROOT / "deploy" / "grafana" / "provisioning" / "alerting" / "llm-stream-alerts.yaml"
    )
    assert [n for n, _ in prom] == [n for n, _ in graf]
    assert len(prom) == 4
    for (_, p), (_, g) in zip(prom, graf):
        assert queries.metric_names(p) == queries.metric_names(g)
        assert set(queries.metric_names(p)) <= set(names.all_series_names())


def test_alert_expressions_recording_rules(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "r.yaml"
    f.write_text("groups:\n- name: g\n  rules:\n  - record: a:b\n    expr: sum(x)\n")
    assert queries.alert_expressions(f) == [("a:b", "sum(x)")]


def test_dashboard_queries_of_build_all():
    """The e2e entry point: build_all() output -> runnable PromQL."""
    import json

    dashboards = {
        f: json.loads((ROOT / "dashboards" / f).read_text())
        for f in ("llm-streams-overview.json", "llm-streams-model.json", "llm-streams-fleet.json")
    }
    pairs = queries.all_queries(dashboards, {"model": "gpt-4o"})
    assert len(pairs) > 30
    assert all("$" not in e for _, e in pairs)
    assert any('gen_ai_request_model=~"gpt-4o"' in e for _, e in pairs)
