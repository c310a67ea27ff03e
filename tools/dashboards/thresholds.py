"""Every alert threshold, window and guard: change them HERE, then run

    PYTHONPATH=src python -m tools.dashboards.build --out dashboards/ --deploy deploy/

which rewrites the Prometheus rules (``dashboards/alerts/llm-stream-alerts.yaml``),
the Grafana-managed rules (``deploy/grafana/provisioning/alerting/``) and the
threshold lines of the dashboards from these values.  The promtool unit tests
(``dashboards/alerts/tests/llm-stream-alerts.test.yaml``) feed series chosen
around the defaults below: after changing a value, adjust the test series (or
the expected annotations) so a bad series still crosses it and a good one
does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class AlertThreshold:
    threshold: float
    window: str  # the rate() window of the expression
    for_: str  # how long the condition must hold before firing
    severity: str
    # minimum number of events in ``window`` before the alert may fire
    # (guards ratios and quantiles against a handful of streams)
    min_events: Optional[int] = None


#: truncated / all streams above this share (0.05 = 5%).
TRUNCATION_RATE = AlertThreshold(
    threshold=0.05, window="5m", for_="10m", severity="page", min_events=20
)

#: recoveries / first-attempt truncations below this share (0.5 = 50%);
#: ``min_events`` = first-attempt truncations needed in the window.
FIX_RATE = AlertThreshold(
    threshold=0.5, window="15m", for_="30m", severity="warning", min_events=5
)

#: p95 time to first chunk above this many seconds.
TTFC_P95 = AlertThreshold(
    threshold=10.0, window="5m", for_="10m", severity="warning", min_events=20
)

#: stalls per stream above this (0.1 = one stall per ten streams; a stall is
#: a gap over OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD, default 5 s).
STALL_RATE = AlertThreshold(
    threshold=0.1, window="10m", for_="15m", severity="warning", min_events=20
)

#: Where each alert's runbook_url points (anchors of dashboards/README.md).
RUNBOOK_BASE_URL = "https://github.com/llm-stream-otel/llm-stream-otel/blob/main/dashboards/README.md"

#: UID of the Prometheus datasource the Grafana-managed rules query (matches
#: deploy/grafana/provisioning/datasources/datasources.yaml).
GRAFANA_PROMETHEUS_UID = "prometheus"
