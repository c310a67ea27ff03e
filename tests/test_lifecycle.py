"""Every way an app can end a stream ends our span exactly once, and the app
sees exactly what it would see without us."""

from __future__ import annotations

import gc
import logging
import threading

import openai
import pytest

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from otel_helpers import make_telemetry
from streaming import consume, request_kwargs


def only_outcome(telemetry):
    spans = telemetry.stream_spans()
    assert len(spans) == 1, "span must be ended exactly once"
    assert telemetry.total(t.METRIC_OUTCOMES) == 1
    return spans[0].attributes[t.OUTCOME]


def test_stream_is_still_an_openai_stream(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none"))
    assert isinstance(stream, openai.Stream)
    assert type(stream).__name__ == "SyncStreamProxy"
    assert stream.response.status_code == 200
    list(stream)


async def test_async_stream_is_still_an_openai_async_stream(instrumented, aclient):
    stream = await aclient.chat.completions.create(**request_kwargs("chat", "none"))
    assert isinstance(stream, openai.AsyncStream)
    assert [c async for c in stream]


def test_chunks_are_the_same_objects(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none"))
    wrapped = stream.__wrapped__
    # Pull directly from the SDK's own iterator through the proxy: same objects.
    seen = []
    original_next = type(wrapped).__next__

    class Spy(type(wrapped)):
        def __next__(self):
            chunk = original_next(self)
            seen.append(chunk)
            return chunk

    wrapped.__class__ = Spy
    received = list(stream)
    assert received and all(a is b for a, b in zip(received, seen)) and len(received) == len(seen)


@pytest.mark.parametrize(
    "fault",
    ["none", "length", "reset_mid_chunk;after=2", "cut_mid_chunk;after=3", "missing_terminator;after=2", "error_event;after=1", "http_500"],
)
def test_app_sees_the_same_chunks_and_exceptions(server, fault):
    """Run the same script with and without instrumentation and compare."""
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        plain_chunks, plain_exc = consume(client, "chat", fault, prompt="same prompt")
        telemetry = make_telemetry()
        instrumentor = LLMStreamInstrumentor()
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
        try:
            chunks, exc = consume(client, "chat", fault, prompt="same prompt")
        finally:
            instrumentor.uninstrument()
    assert [type(c) for c in chunks] == [type(c) for c in plain_chunks]
    assert [c.model_dump(exclude={"id", "created"}) for c in chunks] == [
        c.model_dump(exclude={"id", "created"}) for c in plain_chunks
    ]
    assert type(exc) is type(plain_exc)
    assert str(exc) == str(plain_exc)
    assert len(telemetry.stream_spans()) == 1


def test_break_then_close_is_abandoned(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none;chunks=10"))
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED
    assert instrumented.span().attributes[t.CHUNKS] == 3
    stream.close()  # a second close changes nothing
    assert len(instrumented.stream_spans()) == 1


def test_with_block_exit(instrumented, client):
    with client.chat.completions.create(**request_kwargs("chat", "none;chunks=10")) as stream:
        assert type(stream).__name__ == "SyncStreamProxy"
        next(iter(stream))
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED


def test_with_block_read_to_end_is_completed(instrumented, client):
    with client.chat.completions.create(**request_kwargs("chat", "none")) as stream:
        for _ in stream:
            pass
    assert only_outcome(instrumented) == t.OUTCOME_COMPLETED


def test_exception_in_app_code_inside_with(instrumented, client):
    with pytest.raises(KeyError):
        with client.chat.completions.create(**request_kwargs("chat", "none;chunks=10")) as stream:
            for _ in stream:
                raise KeyError("app bug")
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED


def test_garbage_collected_stream_never_read(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none"))
    del stream
    gc.collect()
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED


def test_garbage_collected_stream_half_read(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none;chunks=10"))
    next(stream)
    next(stream)
    del stream
    gc.collect()
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED
    assert instrumented.span().attributes[t.CHUNKS] == 2


async def test_async_break_close_and_aexit(instrumented, aclient):
    stream = await aclient.chat.completions.create(**request_kwargs("chat", "none;chunks=10"))
    async for _ in stream:
        break
    await stream.close()
    async with await aclient.chat.completions.create(**request_kwargs("chat", "none")) as stream2:
        async for _ in stream2:
            pass
    outcomes = sorted(s.attributes[t.OUTCOME] for s in instrumented.stream_spans())
    assert outcomes == [t.OUTCOME_ABANDONED, t.OUTCOME_COMPLETED]


async def test_async_garbage_collected(instrumented, aclient):
    stream = await aclient.chat.completions.create(**request_kwargs("chat", "none"))
    await stream.__anext__()
    del stream
    gc.collect()
    assert only_outcome(instrumented) == t.OUTCOME_ABANDONED


def test_iterating_from_another_thread(instrumented, client):
    stream = client.chat.completions.create(**request_kwargs("chat", "none"))
    got = []
    worker = threading.Thread(target=lambda: got.extend(stream))
    worker.start()
    worker.join(10)
    assert got and only_outcome(instrumented) == t.OUTCOME_COMPLETED


def test_chat_stream_helper(instrumented, client):
    kwargs = request_kwargs("chat", "none")
    kwargs.pop("stream")
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert only_outcome(instrumented) == t.OUTCOME_COMPLETED


def test_chat_stream_helper_cut(instrumented, client):
    kwargs = request_kwargs("chat", "reset_between;after=2")
    kwargs.pop("stream")
    with pytest.raises(Exception) as info:
        with client.chat.completions.stream(**kwargs) as stream:
            for _ in stream:
                pass
    span = instrumented.span()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert span.attributes[t.ERROR_TYPE] == type(info.value).__name__


async def test_async_chat_stream_helper(instrumented, aclient):
    kwargs = request_kwargs("chat", "none")
    kwargs.pop("stream")
    async with aclient.chat.completions.stream(**kwargs) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content
    assert only_outcome(instrumented) == t.OUTCOME_COMPLETED


def test_responses_stream_helper(instrumented, client):
    kwargs = request_kwargs("responses", "none")
    kwargs.pop("stream")
    with client.responses.stream(**kwargs) as stream:
        final = stream.get_final_response()
    assert final.output_text
    assert only_outcome(instrumented) == t.OUTCOME_COMPLETED


async def test_async_responses_stream_helper(instrumented, aclient):
    kwargs = request_kwargs("responses", "none")
    kwargs.pop("stream")
    async with aclient.responses.stream(**kwargs) as stream:
        final = await stream.get_final_response()
    assert final.output_text
    assert only_outcome(instrumented) == t.OUTCOME_COMPLETED


def test_raw_and_streaming_response_are_untouched(instrumented, client):
    raw = client.chat.completions.with_raw_response.create(**request_kwargs("chat", "none"))
    assert raw.http_response.status_code == 200
    assert [c for c in raw.parse()]
    with client.chat.completions.with_streaming_response.create(**request_kwargs("chat", "none")) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert instrumented.stream_spans() == []


def test_non_streaming_calls_pass_through(instrumented, client):
    kwargs = request_kwargs("chat", "none")
    kwargs.pop("stream")
    completion = client.chat.completions.create(**kwargs)
    assert completion.choices[0].message.content
    assert instrumented.stream_spans() == []
    assert instrumented.points(t.METRIC_OUTCOMES) == []


def test_uninstrument_restores_every_original(telemetry):
    from openai._base_client import BaseClient
    from openai.resources import completions, responses
    from openai.resources.chat import completions as chat

    owners = [chat.Completions, chat.AsyncCompletions, responses.Responses, responses.AsyncResponses,
              completions.Completions, completions.AsyncCompletions]
    before = [owner.__dict__["create"] for owner in owners] + [BaseClient.__dict__["_build_request"]]
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    during = [owner.__dict__["create"] for owner in owners] + [BaseClient.__dict__["_build_request"]]
    assert all(a is not b for a, b in zip(before, during))
    instrumentor.instrument()  # a second instrument() is a no-op, not a double wrap
    assert [owner.__dict__["create"] for owner in owners] + [BaseClient.__dict__["_build_request"]] == during
    instrumentor.uninstrument()
    after = [owner.__dict__["create"] for owner in owners] + [BaseClient.__dict__["_build_request"]]
    assert all(a is b for a, b in zip(before, after))


@pytest.mark.usefixtures("lenient_mode")  # injects a failure on purpose
def test_broken_monitor_never_reaches_the_app(instrumented, client, caplog):
    from llm_stream_otel.stream.monitor import StreamMonitor

    # logged at WARNING the first time in a process, at DEBUG after that
    caplog.set_level(logging.DEBUG, logger="llm_stream_otel")
    original = StreamMonitor.chunk

    def broken(self, now, chunk):
        raise RuntimeError("bug in our monitor")

    StreamMonitor.chunk = broken
    try:
        chunks, exc = consume(client, "chat", "none")
    finally:
        StreamMonitor.chunk = original
    assert exc is None and chunks
    assert "internal error in chunk processing" in caplog.text
    assert len(instrumented.stream_spans()) == 1


def test_for_loop_reads_the_sdk_streams_own_iterator_and_mixes_with_next(instrumented, client):
    """``for`` over a plain ``openai.Stream`` loops over its ``_iterator`` (what its ``__iter__``
    re-yields), one generator layer less per chunk; ``next()`` and ``for`` share it, as without us."""
    stream = client.chat.completions.create(**request_kwargs("chat", "none"))
    inner = stream._self_inner
    assert inner is not None and inner[0] is openai.Stream and inner[1] is vars(stream.__wrapped__)["_iterator"]
    first = next(stream)
    rest = list(stream)
    assert first.choices and rest and rest[-1] is not first
    assert list(stream) == []  # exhausted, as the SDK's own stream would be
    span = instrumented.span()
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert span.attributes[t.CHUNKS] == 1 + len(rest)
