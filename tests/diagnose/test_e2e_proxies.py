"""End to end through real proxies: real cuts -> real Prometheus -> ``llm-stream-otel diagnose``.

``proxy_traffic.py`` streams, with the real openai client (instrumented),
through real nginx, HAProxy and squid in front of the real FaultServer:
proxy read timeouts, a proxy restarted / stopped mid-stream, the upstream
killed behind the proxy, 502 and 504 before the body, a client read timeout,
a stale pooled connection, and a control (a pooled connection the proxy
closed idle, which httpcore notices: nothing breaks). Each scenario has its
own proxy listener on its own loopback address, so each is one
``server.address``. Prometheus (1 s scrapes) scrapes it; the installed
``diagnose`` must name, per address, the cause of that scenario and no other.
Skips without prometheus/nginx/haproxy/squid; fails on CI=true.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy_traffic import table
from support.proxies import find_binary
from support.scraped_traffic import diagnose, require_prometheus, scraped

JOB = "diagnose-proxies-e2e"
HERE = Path(__file__).parent

#: scenario -> the one cause diagnose must name on its server address.
CAUSES = {
    "nginx_read_timeout": "proxy_idle_timeout",
    "haproxy_server_timeout": "proxy_idle_timeout",
    "squid_read_timeout": "proxy_idle_timeout",
    "nginx_restart": "restart",
    "haproxy_stop": "restart",
    "squid_stop": "restart",
    "upstream_killed": "restart",
    "nginx_502": "http_502",
    "nginx_504": "http_504",
    "client_read_timeout": "client_read_timeout",
    "stale_pooled": "stale_connection",
}
_CUT = ("truncated", "incomplete_read", "RemoteProtocolError", 200)
#: scenario -> what every broken stream's span says: outcome, reason, error.cause, status, intermediary.
SPANS = {
    "nginx_read_timeout": (*_CUT, "nginx"),
    "haproxy_server_timeout": (*_CUT, "haproxy"),
    "squid_read_timeout": (*_CUT, "squid"),
    "nginx_restart": (*_CUT, "nginx"),
    "haproxy_stop": (*_CUT, "haproxy"),
    "squid_stop": (*_CUT, "squid"),
    "upstream_killed": (*_CUT, "nginx"),
    "nginx_502": ("failed", None, "InternalServerError", 502, "nginx"),
    "nginx_504": ("failed", None, "InternalServerError", 504, "nginx"),
    "client_read_timeout": ("truncated", "read_timeout", "TimeoutError", 200, "nginx"),
    # no response at all; nginx's close is a FIN, or a RST when the request was still unread
    "stale_pooled": ("failed", None, {"RemoteProtocolError", "ConnectionResetError"}, None, None),
}
_KEYS = ("llm.stream.outcome", "llm.stream.truncation.reason", "llm.stream.error.cause",
         "http.response.status_code", "llm.stream.http.intermediary")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_prometheus()
    missing = [name for name in ("nginx", "haproxy", "squid") if find_binary(name) is None]
    if missing:
        msg = f"{', '.join(missing)} required (Debian: apt-get install -y nginx haproxy squid)"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    tmp = tmp_path_factory.mktemp("proxies")
    out = tmp / "spans.json"
    with scraped(tmp / "prom", HERE / "proxy_traffic.py", JOB, str(out), timeout=120) as r:
        results = json.loads(out.read_text(encoding="utf-8"))
        yield r, results


def _by_host(doc):
    return {s["server"]: s for s in doc["servers"]}


def test_every_span_says_what_cut_it(run):
    _, results = run
    print("\n" + table(results))
    for key, expected in SPANS.items():
        broken = [s for s in results[key]["spans"] if s["llm.stream.outcome"] != "completed"]
        assert len(broken) == 6, (key, results[key]["errors"])
        for span in broken:
            got = [span.get(k) for k in _KEYS]
            assert all(g in e if isinstance(e, set) else g == e for g, e in zip(got, expected)), (key, got)
    restart = results["nginx_restart"]["spans"]  # the app's retries after the restart complete
    assert sum(s["llm.stream.outcome"] == "completed" for s in restart) == 6
    # the silence before the cut is the proxy's timeout (not the longer stall): nginx, HAProxy 1.5 s, squid 4 s
    for key, low, high in (("nginx_read_timeout", 1.2, 1.6), ("haproxy_server_timeout", 1.0, 1.6),
                           ("squid_read_timeout", 3.5, 5.0)):
        assert all(low <= s["llm.stream.idle_before_end"] < high for s in results[key]["spans"]), key
    for key in ("nginx_restart", "haproxy_stop", "squid_stop", "upstream_killed"):
        cut = [s for s in results[key]["spans"] if s["llm.stream.outcome"] == "truncated"]
        # no silence before the cut (diagnose's "instant" is <= 0.1 s; a loaded machine adds a little)
        assert all(s["llm.stream.idle_before_end"] < 0.3 for s in cut), key
    assert all(0.38 <= s["llm.stream.idle_before_end"] < 0.5 for s in results["client_read_timeout"]["spans"])
    control = results["pooled_closed_idle"]["spans"]
    assert len(control) == 3 and all(s["llm.stream.outcome"] == "completed" for s in control)
    assert all(s["llm.stream.connection.reused"] is False for s in control)  # a fresh connection, not the dead one


def test_diagnose_names_each_cause_per_server(run):
    prom, results = run
    out = diagnose(prom, "--json")
    assert out.returncode == 0, out.stderr
    servers = _by_host(json.loads(out.stdout))
    print(json.dumps(servers, indent=1))
    for key, cause in CAUSES.items():
        host = results[key]["host"]
        assert host in servers, (key, host, sorted(servers))
        found = {f["cause"]: f for f in servers[host]["findings"]}
        assert set(found) == {cause}, (key, servers[host])
        assert found[cause]["streams"] >= 4 and found[cause]["share"] >= 0.6, (key, found[cause])
    assert results["pooled_closed_idle"]["host"] not in servers  # nothing broke there: no verdict
    idle = {key: _finding(servers, results, key, "proxy_idle_timeout")["details"]
            for key in ("nginx_read_timeout", "haproxy_server_timeout", "squid_read_timeout")}
    assert idle["nginx_read_timeout"] == {"silence_low_s": 1.0, "silence_high_s": 2.0}  # proxy_read_timeout 1.5s
    assert idle["haproxy_server_timeout"] == {"silence_low_s": 1.0, "silence_high_s": 2.0}  # timeout server 1.5s
    assert idle["squid_read_timeout"] == {"silence_low_s": 3.0, "silence_high_s": 5.0}  # read_timeout 4 seconds
    assert _finding(servers, results, "nginx_restart", "restart")["details"]["fix_rate"] == 1.0  # the app retried
    assert _finding(servers, results, "haproxy_stop", "restart")["details"]["fix_rate"] == 0.0  # it did not
    assert _finding(servers, results, "nginx_502", "http_502")["details"]["intermediary"] == "nginx"
    assert _finding(servers, results, "nginx_504", "http_504")["details"]["intermediary"] == "nginx"
    timeout = _finding(servers, results, "client_read_timeout", "client_read_timeout")["details"]
    assert (timeout["silence_low_s"], timeout["silence_high_s"]) == (0.25, 0.5)  # the client's 0.4 s timeout
    assert 0 < timeout["p99_gap_s"] < 0.4


def _finding(servers, results, key, cause):
    return next(f for f in servers[results[key]["host"]]["findings"] if f["cause"] == cause)


def test_diagnose_text_per_server(run):
    prom, results = run
    out = diagnose(prom)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)
    host = {key: r["host"] for key, r in results.items()}
    assert f"server {host['nginx_read_timeout']}: 6 cut, 0 failed" in text
    assert "proxy idle/read timeout of about 2 s" in text and "proxy idle/read timeout of about 5 s" in text
    assert "server or proxy restarts" in text and "retries recovered 100%" in text
    assert "HTTP 502 from nginx before the body" in text and "HTTP 504 from nginx before the body" in text
    assert "read timeout raised by the client" in text and "stale pooled keep-alive connections" in text
    assert f"server {host['pooled_closed_idle']}:" not in text
