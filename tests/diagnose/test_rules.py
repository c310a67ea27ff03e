"""Pure rules of ``llm-stream-otel diagnose``: each signature, and each near-miss."""

from llm_stream_otel.diagnose.render import as_text
from llm_stream_otel.diagnose.rules import ServerData, diagnose_server

INF = float("inf")


def _causes(d):
    return [f.cause for f in diagnose_server(d).findings]


def test_too_little_data_says_so():
    r = diagnose_server(ServerData("api", cuts=3, failures=1, cuts_by_reason={"incomplete_read": 3}))
    assert r.findings == [] and "too little data: 4 broken streams" in r.note


def test_near_constant_silence_is_a_proxy_idle_timeout():
    # 8 cuts after 59-61 s of silence, 2 instant ones
    d = ServerData("api", cuts=10, idle_buckets=[(0.1, 2), (1, 2), (59, 2), (61, 10), (INF, 10)])
    (f,) = diagnose_server(d).findings
    assert f.cause == "proxy_idle_timeout" and f.streams == 8 and f.share == 0.8
    assert "about 61 s" in f.title and "proxy_read_timeout" in f.fix and "timeout server" in f.fix
    assert "SSE comments" in f.fix


def test_spread_silences_are_not_a_timeout():
    d = ServerData("api", cuts=10, idle_buckets=[(1, 0), (2, 3), (5, 6), (10, 8), (30, 10), (INF, 10)])
    assert "proxy_idle_timeout" not in _causes(d)


def test_instant_cuts_in_bursts_are_restarts_with_fix_rate():
    d = ServerData("api", cuts=20, recoveries=15, window_seconds=1,
                   instant_cuts_over_time=[1, 0, 1, 8, 0, 1, 1, 0, 9, 1])
    (f,) = diagnose_server(d).findings
    assert f.cause == "restart" and f.streams == 15 and f.details["bursts"] == [8, 9]  # above the usual 1
    assert "against a usual 1 per 1 s" in f.evidence
    assert f.details["fix_rate"] == 0.75 and "75%" in f.fix and "retry" in f.fix


def test_steady_instant_cuts_are_not_restarts():
    d = ServerData("api", cuts=30, window_seconds=1, instant_cuts_over_time=[3, 2, 4, 3, 3, 2, 4, 3, 3, 3])
    assert "restart" not in _causes(d)


def test_client_read_timeouts_quote_the_p99_gap():
    d = ServerData("api", cuts=6, cuts_by_reason={"read_timeout": 5, "incomplete_read": 1}, p99_gap=4.2,
                   timeout_idle_buckets=[(2, 0), (3, 5), (INF, 5)])
    (f,) = diagnose_server(d).findings
    assert f.cause == "client_read_timeout" and f.streams == 5
    assert "p99 gap between chunks is 4.2 s" in f.evidence and "2-3 s of silence" in f.evidence


def test_stale_pooled_connections():
    d = ServerData("api", failures=6, stale_reused=4)
    (f,) = diagnose_server(d).findings
    assert f.cause == "stale_connection" and "keepalive_expiry" in f.fix


def test_502_and_504_name_the_intermediary():
    d = ServerData("api", failures=9, failures_by_status={("502", "haproxy"): 4, ("504", "nginx"): 3, ("500", ""): 2})
    fs = diagnose_server(d).findings
    assert [(f.cause, f.details["intermediary"]) for f in fs] == [("http_502", "haproxy"), ("http_504", "nginx")]
    assert "HTTP 504 from nginx" in as_text([diagnose_server(d)], "h")


def test_findings_sorted_biggest_first():
    d = ServerData("api", cuts=12, failures=3, failures_by_status={("502", "nginx"): 3},
                   idle_buckets=[(29, 0), (31, 9), (INF, 9)])
    assert _causes(d) == ["proxy_idle_timeout", "http_502"]
