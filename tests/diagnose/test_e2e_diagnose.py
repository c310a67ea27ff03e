"""End to end: real Prometheus scrapes real instrumented traffic; the real console script diagnoses it.

``traffic.py`` (real openai client -> real FaultServer, our instrumentation,
the Prometheus exporter) sends each signature: proxy idle cuts after 1.2 s
(``idle_cut``), a restart (``FaultServer.cut_open_streams()``) with the app
retrying, client read timeouts (0.6 s against a 3 s ``hang``), stale pooled
connections (``stale_keepalive``), 502/504 from "nginx".  Prometheus (the
dashboards harness, 1 s scrapes) scrapes it; the installed ``llm-stream-otel
diagnose`` must name each cause, in text and in JSON. After the traffic the
script is frozen for 3 s (failed scrapes: Prometheus marks its series
stale); that gap must not count anything twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.scraped_traffic import diagnose, require_prometheus, scraped

JOB = "diagnose-e2e"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_prometheus()
    # frozen: a gap of failed scrapes after the traffic; it must not count anything twice
    with scraped(tmp_path_factory.mktemp("prom"), Path(__file__).with_name("traffic.py"), JOB, frozen=3.0) as r:
        yield r


def test_text_names_each_cause(run):
    out = diagnose(run)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)
    assert "server 127.0.0.1:" in text
    assert "proxy idle/read timeout of about 2 s" in text and "proxy_read_timeout" in text
    assert "server or proxy restarts" in text and "retries recovered" in text
    assert "read timeout raised by the client" in text and "p99 gap between chunks" in text
    assert "stale pooled keep-alive connections" in text and "keepalive_expiry" in text
    assert "HTTP 502 from nginx before the body" in text
    assert "HTTP 504 from nginx before the body" in text


def test_json_names_each_cause(run):
    out = diagnose(run, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    print(json.dumps(doc["servers"], indent=1))
    (server,) = doc["servers"]
    causes = {f["cause"]: f for f in server["findings"]}
    assert set(causes) == {"proxy_idle_timeout", "restart", "client_read_timeout", "stale_connection",
                           "http_502", "http_504"}, causes
    assert causes["proxy_idle_timeout"]["details"] == {"silence_low_s": 1.0, "silence_high_s": 2.0}
    assert causes["http_502"]["details"]["intermediary"] == "nginx"
    assert causes["restart"]["streams"] >= 4 and 0 < causes["restart"]["details"]["fix_rate"] <= 1
    # one restart, which cut 6 streams: the scrape gap after the traffic adds no burst
    assert len(causes["restart"]["details"]["bursts"]) == 1 and causes["restart"]["streams"] <= 6, causes["restart"]
    assert causes["client_read_timeout"]["streams"] == 3 and causes["stale_connection"]["streams"] == 3
    assert server["cuts"] >= 5 and all(0 < f["share"] <= 1 for f in server["findings"])


def test_an_unknown_job_has_no_data(run):
    out = diagnose(run, "--job", "no-such-job")
    assert out.returncode == 0 and "no cut or failed streams" in out.stdout
