"""Recording rules for fleets: the expensive ratios, precomputed per service.

Generated into ``dashboards/alerts/llm-stream-recording-rules.yaml`` by
``python -m tools.dashboards.build``.  Names follow Prometheus'
``level:metric:operations`` convention:

- level ``job``: by service (the dashboards' ``job`` variable);
- level ``fleet``: aggregated over every label (computed from the ``job``
  rates, so a fleet-wide number costs as many series as there are services);
- operations ``rate5m`` (per-second rate over 5m), ``ratio_rate5m`` (a ratio
  of two such rates, 0 where the numerator has no series), ``p95_rate5m``
  (``histogram_quantile`` over the 5m bucket rates).

The fleet dashboard (``build.fleet()``) reads these series.  The overview,
the drill-down and the alerts do not: they keep their own
``$__rate_interval`` / ``$model`` / ``$server`` filters and labels, which a
recording cannot answer.  The recorded series serve fleet-wide views (one series per service instead of a
ratio over services x models x servers x outcomes) and long ranges on a
long-term store; ``tests/dashboards/test_fleet.py`` checks that they equal the
raw expressions on real traffic.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from llm_stream_otel import series as n
from tools.dashboards import promql as q

GROUP_NAME = "llm-stream-recording"
WINDOW = "5m"
SERVICE = (n.SERVICE_LABEL,)
TTFC_QUANTILES = (0.5, 0.95, 0.99)


def _truncated(window: str, labels=SERVICE) -> str:  # type: ignore[no-untyped-def]
    return q.sum_rate(n.OUTCOMES, window, labels, **{n.OUTCOME: "truncated"})


def _first_attempt_truncated(window: str, labels=SERVICE) -> str:  # type: ignore[no-untyped-def]
    return q.sum_rate(n.OUTCOMES, window, labels, **{n.OUTCOME: "truncated", n.IS_RETRY: "false"})


def rules(window: str = WINDOW) -> List[Tuple[str, str]]:
    """``[(record name, PromQL)]`` in evaluation order (rates before the ratios that read them)."""
    w = window
    job = lambda metric, op: f"job:{metric}:{op}{w}"  # noqa: E731
    fleet = lambda metric, op: f"fleet:{metric}:{op}{w}"  # noqa: E731
    ttfc_base = n.TTFC
    out = [
        (job("llm_stream_outcomes", "rate"), q.sum_rate(n.OUTCOMES, w, SERVICE)),
        (job("llm_stream_outcomes_truncated", "rate"), _truncated(w)),
        (job("llm_stream_outcomes_first_attempt_truncated", "rate"), _first_attempt_truncated(w)),
        (job("llm_stream_recoveries", "rate"), q.sum_rate(n.RECOVERIES, w, SERVICE)),
        (job("llm_stream_stalls", "rate"), q.sum_rate(n.STALLS, w, SERVICE)),
        (f"job_le:{ttfc_base}_bucket:rate{w}", q.sum_rate(ttfc_base + "_bucket", w, (*SERVICE, "le"))),
    ]
    rate = {name.split(":")[1]: name for name, _ in out}
    outcomes, truncated = rate["llm_stream_outcomes"], rate["llm_stream_outcomes_truncated"]
    first, recoveries, stalls = (rate["llm_stream_outcomes_first_attempt_truncated"],
                                 rate["llm_stream_recoveries"], rate["llm_stream_stalls"])
    buckets = f"job_le:{ttfc_base}_bucket:rate{w}"
    out += [
        (job("llm_stream_truncation", "ratio_rate"), q.ratio(truncated, outcomes, SERVICE)),
        (job("llm_stream_fix", "ratio_rate"), q.ratio(recoveries, first, SERVICE)),
        (job("llm_stream_stalls_per_stream", "ratio_rate"), q.ratio(stalls, outcomes, SERVICE)),
    ]
    out += [(job(ttfc_base, f"p{x * 100:g}_rate"), f"histogram_quantile({x}, {buckets})") for x in TTFC_QUANTILES]
    # fleet-wide: sums of the per-service rates, then the same ratios
    out += [
        (fleet("llm_stream_truncation", "ratio_rate"), f"sum({truncated} or 0 * {outcomes})\n/\nsum({outcomes})"),
        (fleet("llm_stream_fix", "ratio_rate"), f"sum({recoveries} or 0 * {first})\n/\nsum({first})"),
        (fleet("llm_stream_stalls_per_stream", "ratio_rate"), f"sum({stalls} or 0 * {outcomes})\n/\nsum({outcomes})"),
    ]
    out += [(fleet(ttfc_base, f"p{x * 100:g}_rate"), f"histogram_quantile({x}, sum by (le) ({buckets}))")
            for x in TTFC_QUANTILES]
    return out


def raw_equivalents(window: str = WINDOW) -> Dict[str, str]:
    """``{record name: the same value computed from the raw series}`` (for tests and unloaded rules)."""
    w = window
    fleet_labels: Tuple[str, ...] = ()
    ttfc = {f"job:{n.TTFC}:p{x * 100:g}_rate{w}": q.quantile(x, n.TTFC, w, SERVICE) for x in TTFC_QUANTILES}
    ttfc.update({f"fleet:{n.TTFC}:p{x * 100:g}_rate{w}": q.quantile(x, n.TTFC, w) for x in TTFC_QUANTILES})
    out = {
        f"job:llm_stream_truncation:ratio_rate{w}": q.ratio(_truncated(w), q.sum_rate(n.OUTCOMES, w, SERVICE), SERVICE),
        f"job:llm_stream_fix:ratio_rate{w}": q.ratio(q.sum_rate(n.RECOVERIES, w, SERVICE), _first_attempt_truncated(w), SERVICE),
        f"job:llm_stream_stalls_per_stream:ratio_rate{w}": q.ratio(q.sum_rate(n.STALLS, w, SERVICE), q.sum_rate(n.OUTCOMES, w, SERVICE), SERVICE),
        f"fleet:llm_stream_truncation:ratio_rate{w}": q.ratio(_truncated(w, fleet_labels), q.sum_rate(n.OUTCOMES, w)),
        f"fleet:llm_stream_fix:ratio_rate{w}": q.ratio(q.sum_rate(n.RECOVERIES, w), _first_attempt_truncated(w, fleet_labels)),
        f"fleet:llm_stream_stalls_per_stream:ratio_rate{w}": q.ratio(q.sum_rate(n.STALLS, w), q.sum_rate(n.OUTCOMES, w)),
        **ttfc,
    }
    return out


def rule_file(window: str = WINDOW) -> Dict[str, Any]:
    """The Prometheus rule file of the recording rules, as a dict."""
    return {"groups": [{"name": GROUP_NAME, "rules": [{"record": name, "expr": expr} for name, expr in rules(window)]}]}
