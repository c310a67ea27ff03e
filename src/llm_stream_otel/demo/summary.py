"""Summarise what the instrumentation recorded: the demo's closing numbers.

Pure functions over finished spans and a metrics snapshot, so the figures
shown to a newcomer are computed from the same telemetry a dashboard would
read, and can be tested without running the demo.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .. import semconv as t


@dataclass
class Summary:
    streams: int = 0
    outcomes: Dict[Tuple[str, str], int] = field(default_factory=dict)  # (outcome, reason) -> count
    truncated_first_attempts: int = 0
    recoveries: int = 0
    retries: Dict[str, int] = field(default_factory=dict)
    stalls: int = 0
    ttfc: List[float] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        return sum(n for (outcome, _), n in self.outcomes.items() if outcome == t.OUTCOME_TRUNCATED)

    @property
    def truncation_rate(self) -> Optional[float]:
        return self.truncated / self.streams if self.streams else None

    @property
    def fix_rate(self) -> Optional[float]:
        if not self.truncated_first_attempts:
            return None
        return self.recoveries / self.truncated_first_attempts

    def ttfc_percentile(self, q: float) -> Optional[float]:
        if not self.ttfc:
            return None
        ordered = sorted(self.ttfc)
        index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
        return ordered[index]


def metric_points(metrics_data: Any, name: str) -> Iterable[Any]:
    if metrics_data is None:
        return []
    points: List[Any] = []
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def summarize(spans: Iterable[Any], metrics_data: Any) -> Summary:
    """Build the summary from our CLIENT spans and the metric counters."""
    summary = Summary()
    outcomes: Counter = Counter()
    for span in spans:
        attrs = span.attributes or {}
        outcome = attrs.get(t.OUTCOME)
        if outcome is None or span.kind.name != "CLIENT":
            continue
        summary.streams += 1
        outcomes[(outcome, attrs.get(t.TRUNCATION_REASON, ""))] += 1
        if attrs.get(t.TIME_TO_FIRST_CHUNK) is not None:
            summary.ttfc.append(float(attrs[t.TIME_TO_FIRST_CHUNK]))
    summary.outcomes = dict(outcomes)
    for point in metric_points(metrics_data, t.METRIC_OUTCOMES):
        attrs = point.attributes
        if attrs.get(t.OUTCOME) == t.OUTCOME_TRUNCATED and not attrs.get(t.IS_RETRY):
            summary.truncated_first_attempts += int(point.value)
    summary.recoveries = int(sum(p.value for p in metric_points(metrics_data, t.METRIC_RECOVERIES)))
    summary.stalls = int(sum(p.value for p in metric_points(metrics_data, t.METRIC_STALLS)))
    retries: Counter = Counter()
    for point in metric_points(metrics_data, t.METRIC_RETRIES):
        retries[point.attributes.get(t.RETRY_LAYER, "?")] += int(point.value)
    summary.retries = dict(retries)
    return summary


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _secs(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def summary_rows(summary: Summary) -> List[Tuple[str, str]]:
    """(label, value) rows: the closing numbers, in reading order."""
    rows = [("streams", str(summary.streams))]
    for (outcome, reason), count in sorted(summary.outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        label = f"  {outcome}" + (f" ({reason})" if reason else "")
        rows.append((label, str(count)))
    rows += [
        ("truncation rate", _pct(summary.truncation_rate)),
        ("fix rate", f"{_pct(summary.fix_rate)}  ({summary.recoveries} of {summary.truncated_first_attempts} cut calls recovered)"),
        ("time to first chunk p50", _secs(summary.ttfc_percentile(0.5))),
        ("time to first chunk p95", _secs(summary.ttfc_percentile(0.95))),
        ("stalls", str(summary.stalls)),
    ]
    for layer in ("sdk", "application", "helper"):
        rows.append((f"retries ({layer})", str(summary.retries.get(layer, 0))))
    return rows


def render_text(summary: Summary) -> str:
    rows = summary_rows(summary)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
