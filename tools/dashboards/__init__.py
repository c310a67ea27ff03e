"""Grafana dashboards, Prometheus / Grafana alert rules and their PromQL.

Modules:

- ``names``: the one mapping from OTel instrument / attribute names to the
  Prometheus metric / label names that the exporters produce.
- ``thresholds``: every alert threshold, window and guard (edit here).
- ``promql``: small PromQL builders shared by dashboards and alerts.
- ``alerts``: Prometheus rule file + Grafana alert provisioning (plain dicts).
- ``build``: the dashboards (grafana-foundation-sdk, Python >= 3.11) and the
  ``python -m tools.dashboards.build`` generator CLI.
- ``queries``: extracts the PromQL of dashboards / rule files (for tests).
"""
