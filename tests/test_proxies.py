"""Real nginx, HAProxy and squid between the real openai client and the fault server.

Each scenario is one way a proxy cuts (or fails) a stream; each asserts the
outcome, the truncation reason and the root-cause attributes that tell the
scenarios apart. The fixture's stall threshold is 0.3 s; proxy timeouts are
1 s so the file stays short. Skips without nginx/haproxy/squid, fails on CI=true.
"""

from __future__ import annotations

import os
import socket
import time

import openai
import pytest

from llm_stream_otel import semconv as t
from streaming import consume, request_kwargs
from support.proxies import HAProxy, Nginx, Squid, find_binary, free_port

MAJOR = int(openai.__version__.split(".")[0])


def _binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        msg = f"{name} is required for this test (Debian: apt-get install -y {name}); CI installs it"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    return path


def _proxies(cls, name: str):
    """Yield ``make(upstream_port, **settings)``, which starts a ``cls``; all are closed after the test."""
    binary = _binary(name)
    started = []

    def make(upstream_port: int, **settings):
        proxy = cls(binary, upstream_port, **settings).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


@pytest.fixture
def nginx():
    yield from _proxies(Nginx, "nginx")


@pytest.fixture
def haproxy():
    yield from _proxies(HAProxy, "haproxy")


@pytest.fixture
def squid():
    yield from _proxies(Squid, "squid")


def client_for(proxy, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-test-SECRET", max_retries=0, **kw)


def attrs_of(telemetry):
    (span,) = telemetry.stream_spans()
    return dict(span.attributes)


def consume_then(client, fault: str, action, after: int = 2):
    """Read a stream and call ``action()`` once ``after`` chunks have arrived."""
    got = []
    try:
        stream = client.chat.completions.create(**request_kwargs("chat", fault))
        for chunk in stream:
            got.append(chunk)
            if len(got) == after:
                action()
    except Exception as exc:  # noqa: BLE001 - APIConnectionError (3.x) or httpx's (1.x)
        return got, exc
    return got, None


def assert_cut(attrs, reason, cause, intermediary, status=200):
    assert attrs[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert attrs[t.TRUNCATION_REASON] == reason
    assert attrs[t.ERROR_CAUSE] == cause
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == status
    assert attrs[t.NETWORK_PROTOCOL_VERSION] == "1.1"
    assert attrs[t.HTTP_INTERMEDIARY] == intermediary
    assert attrs[t.HTTP_REQUEST_ID].startswith("req_")  # the upstream's id passes through the proxy
    assert t.HTTP_CONTENT_TYPE not in attrs
    assert 0 < attrs[t.TIME_TO_HEADERS] <= attrs[t.TIME_TO_FIRST_CHUNK]


# 1. proxy read timeout --------------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, settings, low, high, stall",
    [
        ("nginx", {"read_timeout": 1}, 0.95, 1.5, 3),  # proxy_read_timeout 1s: measured 0.99 s
        # HAProxy `timeout server 1s`: measured 0.80 s; its headers (and so,
        # evidently, its chunks) reach the client ~0.2 s after nginx's would.
        ("haproxy", {"server_timeout": 1}, 0.6, 1.5, 3),
        # squid's `read_timeout 1 seconds` is checked lazily, about once a second:
        # measured 0.84-1.98 s, once 2.95 s (a squid just started); a 5 s stall
        # leaves no doubt that squid, not the upstream, ended it.
        ("squid", {"read_timeout": 1}, 0.6, 4.5, 5),
    ],
)
def test_proxy_read_timeout(instrumented, server, request, kind, settings, low, high, stall):
    proxy = request.getfixturevalue(kind)(server.port, **settings)
    with client_for(proxy) as c:
        chunks, exc = consume(c, "chat", f"stall;after=2;seconds={stall}")
    assert exc is not None and chunks
    attrs = attrs_of(instrumented)
    assert_cut(attrs, t.REASON_INCOMPLETE_READ, "RemoteProtocolError", kind)
    assert low <= attrs[t.IDLE_BEFORE_END] < high  # about the proxy's timeout, not the stall
    assert attrs[t.STALL_COUNT] == 1  # the trailing silence is the stall
    assert attrs.get(t.MAX_GAP, 0.0) < 0.3  # the gaps between chunks never showed it


# 2. proxy stopped mid-stream --------------------------------------------------------------

# `nginx -s stop`; SIGTERM = HAProxy's hard stop; SIGTERM to squid with `shutdown_lifetime 0`
@pytest.mark.parametrize("kind", ["nginx", "haproxy", "squid"])
def test_proxy_stopped_mid_stream(instrumented, server, request, kind):
    proxy = request.getfixturevalue(kind)(server.port)
    with client_for(proxy) as c:
        chunks, exc = consume_then(c, "none;chunks=40;delay=0.05", proxy.stop)
    assert exc is not None and 2 <= len(chunks) < 40
    attrs = attrs_of(instrumented)
    assert_cut(attrs, t.REASON_INCOMPLETE_READ, "RemoteProtocolError", kind)
    assert attrs[t.IDLE_BEFORE_END] < 0.3  # no silence: a stop, not a timeout
    assert attrs[t.STALL_COUNT] == 0


# 3. upstream killed behind the proxy ------------------------------------------------------

@pytest.mark.parametrize("kind", ["nginx", "haproxy", "squid"])
def test_upstream_killed_behind_the_proxy(instrumented, server, request, kind):
    proxy = request.getfixturevalue(kind)(server.port)
    with client_for(proxy) as c:
        chunks, exc = consume_then(c, "none;chunks=40;delay=0.05", lambda: server.cut_open_streams())
    assert exc is not None and 2 <= len(chunks) < 40
    attrs = attrs_of(instrumented)
    # The proxy turns the upstream's RST into an unterminated body: the client
    # sees the same incomplete read as a proxy stop, with no silence before it.
    assert_cut(attrs, t.REASON_INCOMPLETE_READ, "RemoteProtocolError", kind)
    assert attrs[t.IDLE_BEFORE_END] < 0.3


# 4. 502 / 504 before the body -------------------------------------------------------------

def test_nginx_502_closed_upstream(instrumented, nginx):
    proxy = nginx(free_port())  # nothing listens there
    with client_for(proxy) as c:
        chunks, exc = consume(c, "chat", "none")
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == 502 and not chunks
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_FAILED
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == 502
    assert attrs[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX
    assert attrs[t.HTTP_CONTENT_TYPE] == "text/html"
    assert attrs[t.ERROR_CAUSE] == type(exc).__name__
    assert attrs[t.TIME_TO_HEADERS] < 0.5  # refused at once
    assert t.IDLE_BEFORE_END not in attrs


def test_nginx_504_upstream_never_answers(instrumented, nginx):
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        proxy = nginx(silent.getsockname()[1], read_timeout=1)
        with client_for(proxy) as c:
            chunks, exc = consume(c, "chat", "none")
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == 504
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_FAILED
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == 504  # differs from the 502 above
    assert attrs[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX
    assert 0.95 <= attrs[t.TIME_TO_HEADERS] < 1.5  # the proxy_read_timeout, spent before the headers
    assert t.IDLE_BEFORE_END not in attrs


# 5. client read timeout through the proxy -------------------------------------------------

def test_client_read_timeout_through_nginx(instrumented, server, nginx):
    proxy = nginx(server.port, read_timeout=3)  # above the stall: the client gives up first
    with client_for(proxy, timeout=0.4) as c:
        chunks, exc = consume(c, "chat", "stall;after=2;seconds=1")
    assert exc is not None and "timeout" in type(exc).__name__.lower()
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert attrs[t.TRUNCATION_REASON] == t.REASON_READ_TIMEOUT
    assert attrs[t.ERROR_CAUSE] == "TimeoutError"
    assert attrs[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX
    assert 0.38 <= attrs[t.IDLE_BEFORE_END] < 0.8  # the client's timeout
    assert attrs[t.STALL_COUNT] == 1


# 6. a stale pooled connection -------------------------------------------------------------

def _local_address(response):
    return response.extensions["network_stream"].get_extra_info("socket").getsockname()


def _warm(c, how: str):
    """Leave a connection in the pool; return its local address.

    A non-streaming call pools its connection on every SDK major; a stream
    does only on 1.x (2.54 and 3.x close it at [DONE]), and only a stream's
    connection is known to ``llm.stream.connection.reused``.
    """
    if how == "call":
        raw = c.chat.completions.with_raw_response.create(model="gpt-test", messages=[{"role": "user", "content": "warm"}])
        return _local_address(raw.http_response)
    if MAJOR >= 2:  # measured on 2.54 and 3.x; 1.x drains the body and pools the connection
        pytest.skip("this openai closes a stream's connection at [DONE]: nothing left in the pool")
    stream = c.chat.completions.create(**request_kwargs("chat", "none"))
    address = _local_address(stream.response)
    for _chunk in stream:
        pass
    return address


def _pooled_then_stream(instrumented, server, nginx, warm: str, pause: float):
    """Pool a connection through nginx (keepalive_timeout 1s), stream ``pause`` s later.

    Returns the pooled and the stream's local addresses and the stream's span attributes.
    """
    proxy = nginx(server.port, keepalive_timeout=1)
    with client_for(proxy) as c:
        pooled = _warm(c, warm)
        instrumented.exporter.clear()
        time.sleep(pause)
        stream = c.chat.completions.create(**request_kwargs("chat", "none"))  # raises if a dead socket were used
        address = _local_address(stream.response)
        for _chunk in stream:
            pass
    return pooled, address, attrs_of(instrumented)


@pytest.mark.parametrize("warm", ["call", "stream"])
def test_stale_pooled_connection_closed_by_nginx(instrumented, server, nginx, warm):
    # nginx closes the idle keep-alive connection after 1 s (a FIN, no RST).
    pooled, address, attrs = _pooled_then_stream(instrumented, server, nginx, warm, 1.5)
    # httpcore sees the FIN on the pooled socket before it sends and opens a new
    # connection: nothing fails, no retry is needed, and the span says fresh.
    assert address != pooled
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert attrs[t.CONNECTION_REUSED] is False
    assert t.CONNECTION_IDLE not in attrs
    assert attrs[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX


@pytest.mark.parametrize("warm", ["call", "stream"])
def test_pooled_connection_within_keepalive_is_reused(instrumented, server, nginx, warm):
    pooled, address, attrs = _pooled_then_stream(instrumented, server, nginx, warm, 0.2)
    assert address == pooled  # the control: inside nginx's keep-alive the pooled socket serves it
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED
    if warm == "stream":  # only an instrumented stream's connection is remembered
        assert attrs[t.CONNECTION_REUSED] is True
        assert 0.18 <= attrs[t.CONNECTION_IDLE] < 0.8
    else:
        assert attrs[t.CONNECTION_REUSED] is False
