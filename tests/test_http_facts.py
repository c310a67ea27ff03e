"""The pure parts of the root-cause facts: intermediary tokens, protocol version."""

from __future__ import annotations

import pytest

from llm_stream_otel import semconv as t
from llm_stream_otel.stream.http_facts import intermediary, protocol_version


@pytest.mark.parametrize(
    "server, via, expected",
    [
        ("nginx/1.22.1", None, "nginx"),
        ("nginx", None, "nginx"),
        ("openresty/1.21", None, "nginx"),
        ("cloudflare", None, "cloudflare"),
        ("envoy", None, "envoy"),
        ("istio-envoy", None, "envoy"),
        ("Google Frontend", None, "google"),
        ("awselb/2.0", None, "awselb"),
        ("uvicorn", "1.1 haproxy", "haproxy"),
        (None, "1.1 squid (squid/5.7)", "squid"),
        (None, "1.1 abc.cloudfront.net (CloudFront), 1.1 varnish", "varnish"),
        ("Apache/2.4.57 (Debian)", None, "apache"),
        ("uvicorn", None, t.ERROR_TYPE_OTHER),
        (None, None, None),
    ],
)
def test_intermediary(server, via, expected):
    assert intermediary(server, via) == expected


@pytest.mark.parametrize("raw, expected", [("HTTP/1.1", "1.1"), (b"HTTP/2", "2"), ("HTTP/1.0", "1.0"), (None, None)])
def test_protocol_version(raw, expected):
    assert protocol_version(raw) == expected
    assert protocol_version(raw) == expected  # again, from the cache of values seen


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
def test_headers_read_in_one_pass_as_each_get_reads_them(module):
    """The single pass over ``Headers.raw`` gives what ``headers.get(name)`` gives for each header
    we read: any case, repeats joined, long values cut, absent ones None; a non-httpx mapping too."""
    from llm_stream_otel.stream.http_facts import _WANTED, _header, _wanted_headers

    httpx = pytest.importorskip(module)
    cases = [
        [("Server", "nginx/1.2"), ("VIA", "1.1 a"), ("via", "1.1 b (Squid)"), ("X-Request-Id", "req_1")],
        [("content-type", "text/event-stream; charset=utf-8"), ("Date", "x"), ("Content-Type", "text/plain")],
        [("x-request-id", "r" * 300), ("server", "")],
        [],
        [("x-request-id", "réq".encode("utf-8")), ("via", "1.1 ü".encode("latin-1"))],  # not ASCII: httpx's own pick
        [("server", "café".encode("utf-8")), ("x-request-id", b"r")],
        [("request-id", "req_anthropic")],  # anthropic
    ]
    for raw in cases:
        headers = httpx.Response(200, headers=raw).headers
        assert _wanted_headers(headers) == {name: _header(headers, name) for name in _WANTED}
    plain = {"server": "envoy", "via": "1.1 haproxy"}
    assert _wanted_headers(plain) == {"server": "envoy", "via": "1.1 haproxy", "x-request-id": None, "request-id": None,
                                      "content-type": None}


def test_connection_registry_keeps_only_live_connections_and_never_confuses_them():
    """Reuse is told by the connection's network stream object itself; an entry leaves with it."""
    import gc
    import types

    from llm_stream_otel.stream import connections

    class NetworkStream:  # httpcore's: one per connection
        def get_extra_info(self, name):
            return None

    class Slotted:
        __slots__ = ()

        def get_extra_info(self, name):
            return None

    def response(stream):
        return types.SimpleNamespace(extensions={"network_stream": stream})

    def monitor(started_at, ended_at=None):
        return types.SimpleNamespace(started_at=started_at, ended_at=ended_at)

    before = len(connections._last_use)
    first = NetworkStream()
    assert connections.connection_facts(monitor(1.0, ended_at=2.0), response(first)) == {t.CONNECTION_REUSED: False}
    assert connections.connection_facts(monitor(5.0), response(first)) == {t.CONNECTION_REUSED: True, t.CONNECTION_IDLE: 3.0}
    assert connections.connection_facts(monitor(1.0), response(NetworkStream())) == {t.CONNECTION_REUSED: False}
    del first
    gc.collect()
    assert len(connections._last_use) == before  # both connections are gone, and so are their entries
    assert connections.connection_facts(monitor(1.0), response(Slotted())) == {}  # no weak reference: not tracked
    assert connections.connection_facts(monitor(1.0), response(object())) == {}  # not a network stream
