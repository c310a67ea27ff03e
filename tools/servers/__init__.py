"""Real servers on loopback (Prometheus, Alertmanager, VictoriaMetrics) for previews and tests."""
