"""Many services, one Prometheus, and a long-term store: real engines, real traffic.

One run for the module, all on 127.0.0.1 with free ports:

- three ``llm-stream-otel demo --duration 20 --hold`` processes, each with
  its own ``OTEL_SERVICE_NAME`` (and seed: different traffic mixes);
- one Prometheus scraping them all (one scrape job per service, named after
  it), with the bundled alert rules and the recording rules (generated with
  a 20 s window), ``remote_write``-ing everything to
- a single-node VictoriaMetrics.

Checks:

- what each process counted (its own ``/metrics``) equals what Prometheus and
  VictoriaMetrics hold, per service, for every series the dashboards read;
- every dashboard query and alert expression, per service and fleet-wide,
  against the processes' counts (``lifetime`` form: ``rate``/``increase``
  replaced by the counter, so the value is exactly what was counted) and
  consistent between services and the fleet;
- the recording rules equal their raw expressions;
- every dashboard query and alert expression gives the same values on
  VictoriaMetrics as on Prometheus (exactly in lifetime form, within
  :data:`VM_MEDIAN_TOLERANCE` with the real rate windows).
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Tuple

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

from llm_stream_otel import series as names  # noqa: E402
from tools.dashboards import alerts, queries, recording  # noqa: E402
from tools.servers import fleet  # noqa: E402
from tools.servers import prometheus as harness  # noqa: E402

SERVICES = {"chat-api": 1, "support-bot": 2, "batch-summaries": 3}  # service -> demo seed
DURATION = 20.0
RECORDING_WINDOW = "20s"
RATE_WINDOW = "15s"  # $__rate_interval with 1 s scrapes, as in test_e2e_prometheus
#: VictoriaMetrics vs Prometheus with the real rate windows, over every
#: (query, series, second) of the run: the median and the 90th percentile of
#: |vm - prom| / |prom| stay within these.  MetricsQL's rate()/increase() also
#: use the sample just before the window and do not extrapolate to its edges,
#: Prometheus' do: on 15 s windows holding a few events each (stalls: one or
#: two), a single point differs by up to one event per window (the max column
#: the test prints).  The stored data are identical (the lifetime test).
VM_MEDIAN_TOLERANCE, VM_P90_TOLERANCE = 0.10, 0.35


# ------------------------------------------------------------------ helpers


def _samples(exposition: str) -> List[Tuple[str, Dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(exposition) for s in fam.samples]


def _total(samples, name: str, **eq: str) -> float:
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in eq.items()))


_WINDOWED = re.compile(r"\b(?:rate|increase)\(([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\[[^\]]+\]\)")


def lifetime(expr: str) -> str:
    """``rate(x[w])`` / ``increase(x[w])`` -> ``x``: the query over the counters' totals."""
    out = _WINDOWED.sub(r"\1", expr)
    assert "rate(" not in out and "increase(" not in out, out
    return out


def _values(result) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in result}


def _close(a: float, b: float, abs_tol: float = 1e-9, rel: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= abs_tol + rel * abs(b)


def _dashboard_queries(job: str, window: str = RATE_WINDOW, rng: str = "60s") -> List[Tuple[str, str]]:
    variables = {"job": job, "__rate_interval": window, "__interval": window, "__range": rng}
    # the fleet dashboard reads the 5m recordings (this test records 20s ones):
    # test_e2e_prometheus checks its queries return data, and
    # test_recording_rules_equal_the_raw_expressions checks the recorded values
    dashboards = {f: d for f, d in harness.load_dashboards().items() if f != "llm-streams-fleet.json"}
    return queries.all_queries(dashboards, variables)


def _alert_parts() -> List[Tuple[str, str]]:
    out = []
    for a in alerts.ALERTS:
        out += [(f"{a.name} value", a.value), (f"{a.name} guard", a.guard), (a.name, a.prometheus_expr())]
    return out


# ------------------------------------------------------------------ fixture


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory, require):
    require("prometheus (on PATH)", harness.prometheus_binary() is not None, "apt-get install -y prometheus")
    require("victoria-metrics (on PATH)", fleet.find_binary(fleet.VICTORIA_METRICS_BINARIES) is not None,
            "apt-get install -y victoria-metrics (.ci/run does)")
    tmp = tmp_path_factory.mktemp("fleet")
    rec = tmp / "recording.yaml"
    rec.write_text(alerts.render_yaml(recording.rule_file(RECORDING_WINDOW)), encoding="utf-8")
    started = time.monotonic()
    demos = {svc: harness.Demo(DURATION, seed=seed, extra_args=["--concurrency", "4"],
                               env={"OTEL_SERVICE_NAME": svc}) for svc, seed in SERVICES.items()}
    targets = {svc: f"127.0.0.1:{d.port}" for svc, d in demos.items()}
    with fleet.VictoriaMetrics(tmp / "vm") as vm, \
            fleet.FleetPrometheus(tmp / "prom", targets, rule_files=[harness.rule_file(), rec],
                                  remote_write=vm.remote_write_url) as prom:
        try:
            for d in demos.values():
                d.start()
            for d in demos.values():
                d.wait_holding(timeout=DURATION + 90)
            counted = {svc: harness.wait_for_final_scrape(prom, d, svc) for svc, d in demos.items()}
            end = time.time() + 2  # two more evaluations of the recording rules
            time.sleep(3)
            expositions = {svc: _samples(d.scrape()) for svc, d in demos.items()}
            # VictoriaMetrics has everything Prometheus has (remote_write lags by a batch)
            expr = "sum by (job) (llm_stream_outcomes_total)"
            deadline = time.monotonic() + 30
            while True:
                vm.flush()
                got = _values(vm.api.query(expr, end))
                if got == _values(prom.query(expr, end)) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            start = min(harness.first_sample_time(prom, svc, d.started_at or end - DURATION, end)
                        for svc, d in demos.items())
            yield {"prom": prom, "vm": vm, "demos": demos, "counted": counted, "expositions": expositions,
                   "start": start, "end": end, "setup": time.monotonic() - started}
        finally:
            for d in demos.values():
                d.stop()


# ------------------------------------------------------------------ many services


def test_each_process_is_its_own_service(fleet_run):
    prom = fleet_run["prom"]
    info = {s["metric"]["job"]: s["metric"].get("service_name") for s in prom.query("target_info")}
    assert info == {svc: svc for svc in SERVICES}  # OTEL_SERVICE_NAME reached Prometheus
    jobs = set(prom.label_values("job", names.OUTCOMES))
    assert jobs == set(SERVICES)
    for svc, n in fleet_run["counted"].items():
        assert n >= 40, (svc, n, fleet_run["demos"][svc].output())
    assert fleet_run["setup"] < 90


def _read_series() -> List[str]:
    """Every series name a dashboard query or alert reads."""
    pairs = _dashboard_queries(".*") + _alert_parts()
    return sorted(queries.referenced_metrics(pairs))


def test_prometheus_holds_what_each_process_counted(fleet_run):
    prom, end = fleet_run["prom"], fleet_run["end"]
    for series in _read_series():
        got = _values(prom.query(f"sum by (job) ({series})", end))
        for svc, samples in fleet_run["expositions"].items():
            want = _total(samples, series)
            assert _close(got.get((("job", svc),), 0.0), want), (series, svc, got, want)


def _counted_ratios(samples) -> Dict[str, float]:
    streams = _total(samples, names.OUTCOMES)
    first = _total(samples, names.OUTCOMES, **{names.OUTCOME: "truncated", names.IS_RETRY: "false"})
    return {
        "Truncation rate": _total(samples, names.OUTCOMES, **{names.OUTCOME: "truncated"}) / streams,
        "Fix rate": _total(samples, names.RECOVERIES) / first,
        "Streams": streams,
    }


def test_dashboard_stats_equal_what_the_processes_counted(fleet_run):
    """The overview's stat panels, per service and fleet-wide, vs the processes' own counts."""
    prom, end = fleet_run["prom"], fleet_run["end"]
    fleet_samples = [s for samples in fleet_run["expositions"].values() for s in samples]
    checked = 0
    for job, samples in [*fleet_run["expositions"].items(), (".*", fleet_samples)]:
        want = _counted_ratios(samples)
        for title, expr in _dashboard_queries(job):
            if title in want and "by (" not in expr:
                got = harness.finite_values(prom.query(lifetime(expr), end))
                assert len(got) == 1 and _close(got[0], want[title]), (job, title, got, want[title], expr)
                checked += 1
    assert checked >= 4 * 4, checked  # Streams + 2 truncation + 2 fix-rate panels, 4 selections


def test_every_dashboard_query_per_service_and_fleet_wide(fleet_run):
    """Each service's value is its own (job filter), the fleet's combines them.

    Lifetime form: additive queries (sums) give the fleet = the sum of the
    services, label set by label set; ratios and quantiles give a fleet value
    between the services' values (a weighted mean / a merged distribution).
    """
    prom, end = fleet_run["prom"], fleet_run["end"]
    fleet_q = _dashboard_queries(".*")
    per_service = {svc: _dashboard_queries(svc) for svc in SERVICES}
    failures = []
    for i, (title, expr) in enumerate(fleet_q):
        got_fleet = _values(prom.query(lifetime(expr), end))
        got = {svc: _values(prom.query(lifetime(per_service[svc][i][1]), end)) for svc in SERVICES}
        if not got_fleet or not all(got.values()):
            failures.append(f"{title}: no data (fleet {got_fleet}, services {got})")
            continue
        additive = "/" not in expr and "histogram_quantile" not in expr
        for key, value in got_fleet.items():
            parts = [got[svc][key] for svc in SERVICES if key in got[svc]]
            if additive and not _close(value, sum(parts)):
                failures.append(f"{title} {key}: fleet {value} != sum of services {parts}")
            finite = [p for p in parts if math.isfinite(p)]
            if not additive and finite and not min(finite) - 1e-9 <= value <= max(finite) + 1e-9:
                failures.append(f"{title} {key}: fleet {value} outside the services' {parts}")
    assert not failures, "\n".join(failures)


def test_alert_expressions_per_service_equal_the_counts(fleet_run):
    """Alert value and guard per job/model/server = the process's counts for that model/server."""
    prom, end = fleet_run["prom"], fleet_run["end"]
    by_name = {a.name: a for a in alerts.ALERTS}
    trunc, fix = by_name["LLMStreamTruncationRateHigh"], by_name["LLMStreamFixRateLow"]
    checked = 0
    for alert in alerts.ALERTS:
        for part in (alert.value, alert.guard.rsplit(">=", 1)[0]):
            jobs = {dict(k)["job"] for k in _values(prom.query(lifetime(part), end))}
            assert jobs == set(SERVICES), (alert.name, jobs)
    trunc_value = _values(prom.query(lifetime(trunc.value), end))
    trunc_guard = _values(prom.query(lifetime(trunc.guard.rsplit(">=", 1)[0]), end))
    fix_value = _values(prom.query(lifetime(fix.value), end))
    for svc, samples in fleet_run["expositions"].items():
        pairs = {(labels[names.PROVIDER], labels[names.MODEL], labels[names.SERVER])
                 for n, labels, _ in samples if n == names.OUTCOMES}
        for provider, model, server in pairs:
            key = tuple(sorted({"job": svc, names.PROVIDER: provider, names.MODEL: model, names.SERVER: server}.items()))
            sel = {names.MODEL: model, names.SERVER: server}
            streams = _total(samples, names.OUTCOMES, **sel)
            truncated = _total(samples, names.OUTCOMES, **sel, **{names.OUTCOME: "truncated"})
            assert _close(trunc_guard[key], streams), (key, trunc_guard, streams)
            if truncated:
                assert _close(trunc_value[key], truncated / streams), (key, trunc_value, truncated / streams)
            else:  # no truncated series for the pair: the ratio has no sample, the alert cannot fire
                assert key not in trunc_value, (key, trunc_value)
            first = _total(samples, names.OUTCOMES, **sel, **{names.OUTCOME: "truncated", names.IS_RETRY: "false"})
            if first:
                want = _total(samples, names.RECOVERIES, **sel) / first
                assert _close(fix_value[key], want), (key, fix_value.get(key), want)
            checked += 1
    assert checked >= len(SERVICES) * 2  # two models per demo


def test_recording_rules_equal_the_raw_expressions(fleet_run):
    prom, end = fleet_run["prom"], fleet_run["end"]
    raw = recording.raw_equivalents(RECORDING_WINDOW)
    compared = 0
    for name, expr in raw.items():
        # Query the raw expression at the very time the rule was evaluated: both then
        # read the same samples (a quantile over 20 s of a few streams can jump a whole
        # bucket between two instants a second apart). The tolerance only covers a
        # scrape appended between the rule's evaluation and this query.
        stamps = _values(prom.query(f"timestamp({name})", end - 1))
        assert stamps, (name, "no recorded sample")
        at = max(stamps.values())
        recorded = _values(prom.query(f"{name}", at))
        direct = _values(prom.query(expr, at))
        recorded = {tuple(kv for kv in k if kv[0] != "__name__"): v for k, v in recorded.items()}
        assert recorded.keys() == direct.keys(), (name, recorded, direct)
        for key, value in direct.items():
            assert _close(recorded[key], value, abs_tol=0.02, rel=0.2), (name, key, recorded[key], value)
            compared += 1
    assert compared >= len(SERVICES) * 3 + 3


# ------------------------------------------------------------------ VictoriaMetrics


def _everything() -> List[Tuple[str, str]]:
    return _dashboard_queries(".*") + [(t, e) for svc in SERVICES for t, e in _dashboard_queries(svc)] \
        + _alert_parts()


def test_victoria_metrics_equals_prometheus_on_the_counts(fleet_run):
    """Lifetime form: the same stored samples give exactly the same answers."""
    prom, vm, end = fleet_run["prom"], fleet_run["vm"], fleet_run["end"]
    failures = []
    for title, expr in _everything():
        p, v = _values(prom.query(lifetime(expr), end)), _values(vm.api.query(lifetime(expr), end))
        if p.keys() != v.keys() or not all(_close(v[k], p[k]) for k in p):
            failures.append(f"{title}: prometheus {p} vm {v}\n    {lifetime(expr)}")
    assert not failures, "\n".join(failures)


def _rel(v: float, p: float) -> float:
    return abs(v - p) / max(abs(p), 1e-12) if p or v else 0.0


def compare_rate_queries(prom, vm, start: float, end: float) -> List[Dict[str, Any]]:
    """Every query as the dashboards run it, at every second of the run, on both engines."""
    rows = []
    for title, expr in _everything():
        p_all = prom.query_range(expr, start, end, 1)
        v_all = vm.api.query_range(expr, start, end, 1)
        p = {(tuple(sorted(s["metric"].items())), float(t)): float(x) for s in p_all for t, x in s["values"]}
        v = {(tuple(sorted((k, val) for k, val in s["metric"].items() if k != "__name__")), float(t)): float(x)
             for s in v_all for t, x in s["values"]}
        both = [k for k in p if k in v and math.isfinite(p[k]) and math.isfinite(v[k])]
        diffs = sorted(_rel(v[k], p[k]) for k in both)
        rows.append({"query": title, "expr": expr, "points": len(both), "prom_only": len(set(p) - set(v)),
                     "vm_only": len(set(v) - set(p)),
                     "median_rel_diff": diffs[len(diffs) // 2] if diffs else math.nan,
                     "max_rel_diff": diffs[-1] if diffs else math.nan, "diffs": diffs})
    return rows


def test_victoria_metrics_equals_prometheus_with_rate_windows(fleet_run):
    """The queries as Grafana sends them (15 s windows), over the whole run, at 1 s steps."""
    prom, vm = fleet_run["prom"], fleet_run["vm"]
    # from the first full 15 s window to the end
    rows = compare_rate_queries(prom, vm, fleet_run["start"] + 16, fleet_run["end"])
    for r in rows:
        print(f"| {r['query'][:44]:44} | {r['points']:5} | {r['median_rel_diff']:.4f} | {r['max_rel_diff']:.4f} "
              f"| {r['prom_only']} | {r['vm_only']} |")
    diffs = sorted(d for r in rows for d in r["diffs"])
    points, missing = len(diffs), sum(r["prom_only"] + r["vm_only"] for r in rows)
    median, p90 = diffs[points // 2], diffs[int(points * 0.9)]
    print(f"all: {points} points, median rel diff {median:.4f}, p90 {p90:.4f}, max {diffs[-1]:.4f}, "
          f"on one engine only {missing}")
    # every query compared on data; only the two alerts that do not hold for the demo are empty
    quiet = {"LLMStreamTimeToFirstChunkHigh", "LLMStreamStallRateHigh"}
    assert points > 1000 and all(r["points"] for r in rows if r["query"] not in quiet), rows
    assert median <= VM_MEDIAN_TOLERANCE and p90 <= VM_P90_TOLERANCE, (median, p90)
    assert missing <= 0.05 * points, missing


# ------------------------------------------------------------------ cardinality budget


def test_series_per_service_stay_within_the_budget(fleet_run):
    from tools.dashboards import cardinality as c

    per_pair = c.budget_per_pair()
    for svc, samples in fleet_run["expositions"].items():
        m = c.measure(samples)
        total = sum(m["series"].values())
        print(f"{svc}: {total} series, {len(m['pairs'])} model/server pairs, budget {len(m['pairs']) * per_pair}; "
              f"combos per pair {m['combos']}")
        changed = {b: sorted(m["keys"][b] ^ c.LABEL_KEYS.get(b, frozenset())) for b in m["keys"]
                   if m["keys"][b] != c.LABEL_KEYS.get(b)}
        assert not changed, f"a metric gained or lost a label: {changed}"
        assert set(m["keys"]) == set(c.LABEL_KEYS), "a metric the budget does not know"
        assert all(counts == {c.buckets(b)} for b, counts in m["buckets"].items()), m["buckets"]
        for base, pairs in m["combos"].items():
            assert max(pairs.values()) <= c.COMBOS_PER_PAIR[base], (svc, base, pairs)
        assert total <= len(m["pairs"]) * per_pair
        # the formula is exact: combinations x width, summed
        assert total == sum(k * c.width(b) for b, pairs in m["combos"].items() for k in pairs.values())
