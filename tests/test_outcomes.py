"""Each real fault, through the real openai client, gives the right outcome.

The fault server cuts real sockets (RST, FIN mid-chunk), ends bodies without
a terminator, sends error events, stalls and answers 5xx; the instrumentor
records into the real OTel SDK with in-memory exporters.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from llm_stream_otel import semconv as t
from streaming import ENDPOINTS, aconsume, consume, generated_chunks

# fault spec -> (outcome, truncation reason, does the app see an exception?)
SCENARIOS = {
    "none": (t.OUTCOME_COMPLETED, None, False),
    "length": (t.OUTCOME_LENGTH, None, False),
    "content_filter": (t.OUTCOME_CONTENT_FILTER, None, False),
    "reset_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, True),
    "reset_between;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, True),
    "cut_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, True),
    "missing_terminator;after=2": (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR, False),
    "error_event;after=2": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, None),
}


def check_stream_telemetry(telemetry, endpoint, fault, chunks, exc):
    outcome, reason, raises = SCENARIOS[fault]
    if raises is not None:
        assert (exc is not None) == raises, exc
    span = telemetry.span()
    attrs = dict(span.attributes)
    assert span.kind == SpanKind.CLIENT
    assert span.name == ("text_completion gpt-test" if endpoint == "completions" else "chat gpt-test")
    assert attrs[t.GEN_AI_REQUEST_STREAM] is True
    assert attrs[t.GEN_AI_REQUEST_MODEL] == "gpt-test"
    assert attrs[t.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[t.SERVER_ADDRESS] == "127.0.0.1"
    assert attrs[t.OUTCOME] == outcome, (attrs, exc)
    assert attrs.get(t.TRUNCATION_REASON) == reason
    assert attrs[t.CHUNKS] == len(chunks)
    if outcome == t.OUTCOME_TRUNCATED:
        assert span.status.status_code == StatusCode.ERROR
        assert attrs[t.ERROR_TYPE] == (type(exc).__qualname__ if exc else reason)
        assert [e.name for e in span.events if e.name == t.EVENT_TRUNCATED] == [t.EVENT_TRUNCATED]
    else:
        assert span.status.status_code == StatusCode.UNSET
        assert t.ERROR_TYPE not in attrs
    assert telemetry.total(t.METRIC_OUTCOMES, llm__stream__outcome=outcome) == 1
    assert telemetry.total(t.METRIC_OUTCOMES) == 1
    (point,) = telemetry.points(t.METRIC_OUTCOMES)
    assert dict(point.attributes).get(t.TRUNCATION_REASON) == reason
    assert dict(point.attributes)[t.IS_RETRY] is False
    assert telemetry.total(t.METRIC_DURATION) == 1
    assert telemetry.total(t.METRIC_CHUNKS) == 1
    assert telemetry.points(t.METRIC_CHUNKS)[0].sum == len(chunks)
    generated = generated_chunks(endpoint, chunks)
    if generated:
        assert telemetry.total(t.METRIC_TIME_TO_FIRST_CHUNK) == 1
        assert telemetry.total(t.METRIC_TIME_PER_OUTPUT_CHUNK) == generated - 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", list(SCENARIOS))
def test_sync_outcomes(instrumented, client, endpoint, fault):
    chunks, exc = consume(client, endpoint, fault)
    check_stream_telemetry(instrumented, endpoint, fault, chunks, exc)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", list(SCENARIOS))
async def test_async_outcomes(instrumented, aclient, endpoint, fault):
    chunks, exc = await aconsume(aclient, endpoint, fault)
    check_stream_telemetry(instrumented, endpoint, fault, chunks, exc)


def test_usage_chunk_records_tokens(instrumented, client):
    chunks, exc = consume(client, "chat", "none", stream_options={"include_usage": True})
    assert exc is None and chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    span = instrumented.span()
    assert span.attributes[t.GEN_AI_USAGE_INPUT_TOKENS] == usage.prompt_tokens
    assert span.attributes[t.GEN_AI_USAGE_OUTPUT_TOKENS] == usage.completion_tokens
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    by_type = {p.attributes[t.GEN_AI_TOKEN_TYPE]: p.sum for p in instrumented.points(t.METRIC_TOKEN_USAGE)}
    assert by_type == {"input": usage.prompt_tokens, "output": usage.completion_tokens}


def test_responses_usage(instrumented, client):
    chunks, exc = consume(client, "responses", "none")
    assert exc is None
    final = chunks[-1]
    assert final.type == "response.completed"
    span = instrumented.span()
    assert span.attributes[t.GEN_AI_USAGE_OUTPUT_TOKENS] == final.response.usage.output_tokens
    assert span.attributes[t.GEN_AI_RESPONSE_ID] == final.response.id


def test_stall_and_time_to_first_chunk_match_injected_delays(instrumented, client):
    chunks, exc = consume(client, "chat", "stall;after=2;seconds=0.6;first_delay=0.25")
    assert exc is None
    span = instrumented.span()
    attrs = span.attributes
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert 0.24 <= attrs[t.TIME_TO_FIRST_CHUNK] < 0.25 + 0.4
    assert attrs[t.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] == attrs[t.TIME_TO_FIRST_CHUNK]
    assert 0.55 <= attrs[t.MAX_GAP] < 0.6 + 0.4
    assert attrs[t.STALL_COUNT] == 1
    stall_events = [e for e in span.events if e.name == t.EVENT_STALL]
    assert len(stall_events) == 1 and stall_events[0].attributes["llm.stream.gap"] >= 0.55
    assert instrumented.total(t.METRIC_STALLS) == 1
    (ttfc,) = instrumented.points(t.METRIC_TIME_TO_FIRST_CHUNK)
    assert 0.24 <= ttfc.sum < 0.65
    (gaps,) = instrumented.points(t.METRIC_TIME_PER_OUTPUT_CHUNK)
    assert gaps.count == len(chunks) - 1
    assert 0.55 <= gaps.max < 1.0


def test_read_timeout_mid_stream(instrumented, server):
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.4) as slow_client:
        chunks, exc = consume(slow_client, "chat", "stall;after=2;seconds=2")
    # openai 3.x wraps it in APITimeoutError; 1.x lets httpx.ReadTimeout through.
    assert type(exc).__name__ in ("APITimeoutError", "ReadTimeout"), repr(exc)
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.TRUNCATION_REASON]) == (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT)
    assert attrs[t.ERROR_TYPE] == type(exc).__name__


@pytest.mark.parametrize("fault, error", [("http_500", openai.InternalServerError), ("http_429", openai.RateLimitError)])
def test_http_error_before_body_is_failed(instrumented, client, fault, error):
    chunks, exc = consume(client, "chat", fault)
    assert isinstance(exc, error) and chunks == []
    span = instrumented.span()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_FAILED
    assert span.attributes[t.ERROR_TYPE] == error.__name__
    assert span.status.status_code == StatusCode.ERROR
    assert instrumented.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_FAILED) == 1
    (duration,) = instrumented.points(t.METRIC_DURATION)
    assert duration.attributes[t.ERROR_TYPE] == error.__name__
    assert instrumented.points(t.METRIC_TIME_TO_FIRST_CHUNK) == []


async def test_async_connect_error_is_failed(instrumented):
    dead = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0)
    chunks, exc = await aconsume(dead, "chat", "none")
    await dead.close()
    assert isinstance(exc, openai.APIConnectionError)
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_FAILED


def test_tool_calls_complete(instrumented, client):
    chunks, exc = consume(client, "chat", "tool_calls")
    assert exc is None
    attrs = instrumented.span().attributes
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert list(attrs[t.GEN_AI_RESPONSE_FINISH_REASONS]) == ["tool_calls"]


def test_n_choices(instrumented, client):
    chunks, exc = consume(client, "chat", "none", n=2)
    assert exc is None
    assert {c.index for chunk in chunks for c in chunk.choices} == {0, 1}
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_COMPLETED




async def test_concurrent_async_streams(instrumented, aclient):
    results = await asyncio.gather(
        aconsume(aclient, "chat", "none;delay=0.01"),
        aconsume(aclient, "chat", "reset_between;after=3;delay=0.01"),
        aconsume(aclient, "chat", "stall;after=1;seconds=0.4"),
    )
    spans = instrumented.stream_spans()
    assert len(spans) == 3
    by_outcome = sorted((s.attributes[t.OUTCOME], s.attributes[t.STALL_COUNT]) for s in spans)
    assert by_outcome == [(t.OUTCOME_COMPLETED, 0), (t.OUTCOME_COMPLETED, 1), (t.OUTCOME_TRUNCATED, 0)]
    assert sorted(len(chunks) for chunks, _ in results)[0] == 3
