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
