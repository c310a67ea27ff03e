"""``llm-stream-otel diagnose``: why streams are cut, read from Prometheus.

``rules`` holds the pure logic (numbers in, findings out), ``prometheus``
the stdlib HTTP client and the queries, ``render`` the text/JSON output.
"""
