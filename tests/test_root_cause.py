"""Why was it cut: the root-cause attributes and the idle-before-end histogram.

Through the real openai client against the real fault server (proxy-like idle
cuts, a restart that cuts every open stream, a stale keep-alive close,
502/504 pages of an intermediary, a client read timeout), into the real OTel
SDK. The fixture's stall threshold is 0.3 s.
"""

from __future__ import annotations

import bisect
import threading
import time

import openai
import pytest

from llm_stream_otel import semconv as t
from streaming import aconsume, consume, request_kwargs


def attrs_of(telemetry):
    return dict(telemetry.span().attributes)


def outcome_point(telemetry):
    (point,) = telemetry.points(t.METRIC_OUTCOMES)
    return dict(point.attributes)


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_idle_cut_measures_the_silence_that_caused_it(instrumented, client, endpoint):
    # Warm up: the first call of an endpoint pays the SDK's lazy imports and model
    # builds, which on a loaded machine eat into the server's silence before the
    # client has read the chunks that precede it.
    consume(client, endpoint, "none")
    instrumented.exporter.clear()
    chunks, exc = consume(client, endpoint, "idle_cut;after=2;seconds=0.6")
    assert exc is not None  # APIConnectionError on 3.x, httpx's RemoteProtocolError on 1.x
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert attrs[t.TRUNCATION_REASON] == t.REASON_INCOMPLETE_READ
    # Gaps between chunks were tiny: only the trailing silence shows the 0.6 s.
    # It is the silence the client saw (the server's 0.6 s, less the time the
    # client took to read the chunks before it), hence the lower bound.
    assert 0.4 <= attrs[t.IDLE_BEFORE_END] < 1.0
    assert attrs.get(t.MAX_GAP, 0.0) < 0.3
    assert attrs[t.STALL_COUNT] == 1  # the trailing silence is a stall
    assert attrs[t.ERROR_CAUSE] == "RemoteProtocolError"
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == 200
    assert attrs[t.NETWORK_PROTOCOL_VERSION] == "1.1"
    assert attrs[t.HTTP_INTERMEDIARY] == t.ERROR_TYPE_OTHER  # the fault server's own `server` header
    assert attrs[t.HTTP_REQUEST_ID].startswith("req_")
    assert t.HTTP_CONTENT_TYPE not in attrs  # text/event-stream is the expected type
    assert 0 < attrs[t.TIME_TO_HEADERS] <= attrs[t.TIME_TO_FIRST_CHUNK]
    (point,) = instrumented.points(t.METRIC_IDLE_BEFORE_END)
    assert point.count == 1 and point.sum == attrs[t.IDLE_BEFORE_END]
    assert dict(point.attributes)[t.TRUNCATION_REASON] == t.REASON_INCOMPLETE_READ
    # (0.5, 1] holds it: sub-second resolution below the proxy limits.
    bounds = list(point.explicit_bounds)
    assert bounds == list(t.IDLE_BEFORE_END_BUCKETS)
    assert point.bucket_counts[bisect.bisect_left(bounds, point.sum)] == 1
    assert set(t.IDLE_BEFORE_END_BUCKETS) >= {29, 31, 59, 61, 99, 101, 119, 121, 299, 301}
    (counted,) = [dict(p.attributes) for p in instrumented.points(t.METRIC_OUTCOMES)
                  if p.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED]
    assert counted[t.ERROR_CAUSE] == "RemoteProtocolError"
    assert counted[t.HTTP_RESPONSE_STATUS_CODE] == 200
    assert counted[t.OUTCOME] == t.OUTCOME_TRUNCATED


async def test_idle_cut_async(instrumented, aclient):
    chunks, exc = await aconsume(aclient, "chat", "idle_cut;after=1;seconds=0.4")
    attrs = attrs_of(instrumented)
    assert attrs[t.TRUNCATION_REASON] == t.REASON_INCOMPLETE_READ
    assert 0.38 <= attrs[t.IDLE_BEFORE_END] < 0.8
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == 200


def test_cut_before_any_chunk_counts_silence_from_the_headers(instrumented, client):
    chunks, exc = consume(client, "chat", "idle_cut;after=0;seconds=0.4")
    attrs = attrs_of(instrumented)
    # The chat preamble is the first content chunk; after=0 cuts before it.
    assert attrs[t.CHUNKS] == len(chunks)
    assert 0.38 <= attrs[t.IDLE_BEFORE_END] < 0.8


def test_completed_stream_has_no_silence_and_no_stall(instrumented, client):
    chunks, exc = consume(client, "chat", "none")
    assert exc is None
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert attrs[t.IDLE_BEFORE_END] < 0.1
    assert attrs[t.STALL_COUNT] == 0
    assert t.ERROR_CAUSE not in attrs
    assert instrumented.points(t.METRIC_IDLE_BEFORE_END) == []  # truncated streams only


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_error_before_the_body(instrumented, client, status):
    chunks, exc = consume(client, "chat", f"http_{status}")
    assert isinstance(exc, openai.APIStatusError) and exc.status_code == status
    attrs = attrs_of(instrumented)
    assert attrs[t.OUTCOME] == t.OUTCOME_FAILED
    assert attrs[t.HTTP_RESPONSE_STATUS_CODE] == status  # 502 and 504 differ
    assert attrs[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX
    assert attrs[t.HTTP_CONTENT_TYPE] == "text/html"
    assert attrs[t.TIME_TO_HEADERS] > 0
    assert t.IDLE_BEFORE_END not in attrs
    assert attrs[t.ERROR_CAUSE] == type(exc).__name__  # a status error is its own cause
    counted = outcome_point(instrumented)
    assert counted[t.HTTP_RESPONSE_STATUS_CODE] == status
    assert counted[t.HTTP_INTERMEDIARY] == t.INTERMEDIARY_NGINX


def test_restart_cuts_every_open_stream_at_once(instrumented, server):
    results = []
    started = threading.Barrier(4)

    def run():
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c:
            stream = c.chat.completions.create(**request_kwargs("chat", "none;chunks=40;delay=0.05"))
            got = []
            try:
                for chunk in stream:
                    got.append(chunk)
                    if len(got) == 2:
                        started.wait(5)
            except Exception as exc:  # noqa: BLE001 - APIConnectionError (3.x) or httpx's (1.x)
                results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(5)
    time.sleep(0.02)
    assert server.cut_open_streams() == 3
    for thread in threads:
        thread.join(5)
    assert len(results) == 3
    spans = instrumented.stream_spans()
    assert len(spans) == 3
    ends = []
    for span in spans:
        attrs = dict(span.attributes)
        assert attrs[t.TRUNCATION_REASON] == t.REASON_CONNECTION_RESET
        assert attrs[t.ERROR_CAUSE] == "ConnectionResetError"
        assert attrs[t.IDLE_BEFORE_END] < 0.2  # no silence: a crash/restart signature
        ends.append(span.end_time)
    assert (max(ends) - min(ends)) / 1e9 < 0.5  # clustered in time


def _local_address(stream):
    return stream.response.extensions["network_stream"].get_extra_info("socket").getsockname()


def test_connection_reuse_matches_the_socket(instrumented, client):
    addresses = []
    for _ in range(2):
        stream = client.chat.completions.create(**request_kwargs("chat", "none"))
        addresses.append(_local_address(stream))
        for _chunk in stream:
            pass
        time.sleep(0.05)
    first, second = (dict(s.attributes) for s in instrumented.stream_spans())
    assert first[t.CONNECTION_REUSED] is False
    # openai 1.x drains the body after [DONE] and pools the connection; 2.x and
    # 3.x close the response at [DONE], so their next stream opens a new one.
    same = addresses[0] == addresses[1]
    assert same == (int(openai.__version__.split(".")[0]) < 2)
    assert second[t.CONNECTION_REUSED] is same
    if same:
        assert 0.04 <= second[t.CONNECTION_IDLE] < 1.0


def test_stale_keepalive_close(instrumented, client):
    # A non-streaming call leaves its connection in the pool on every SDK major...
    client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "warm"}])
    # ...which the server has given up on when the stream's request arrives.
    _, exc = consume(client, "chat", "stale_keepalive")
    assert isinstance(exc, openai.APIConnectionError)  # raised by create(), wrapped on every major
    stale = attrs_of(instrumented)
    assert stale[t.OUTCOME] == t.OUTCOME_FAILED
    assert stale[t.ERROR_CAUSE] == "RemoteProtocolError"
    assert t.HTTP_RESPONSE_STATUS_CODE not in stale  # no response at all
    assert outcome_point(instrumented)[t.ERROR_CAUSE] == "RemoteProtocolError"


def test_fresh_connection_is_not_reused(instrumented, server):
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c:
        _, exc = consume(c, "chat", "stale_keepalive")  # fresh connection: served normally
    assert exc is None
    attrs = attrs_of(instrumented)
    assert attrs[t.CONNECTION_REUSED] is False
    assert t.CONNECTION_IDLE not in attrs


def test_client_read_timeout(instrumented, server):
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.3) as c:
        _, exc = consume(c, "chat", "stall;after=2;seconds=1.5")
    assert exc is not None and "timeout" in type(exc).__name__.lower()
    attrs = attrs_of(instrumented)
    assert attrs[t.TRUNCATION_REASON] == t.REASON_READ_TIMEOUT
    assert attrs[t.ERROR_CAUSE] == "TimeoutError"  # the socket's, on every major
    assert 0.28 <= attrs[t.IDLE_BEFORE_END] < 0.9
    assert attrs[t.STALL_COUNT] == 1
