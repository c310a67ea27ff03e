"""The opt-in resilient stream helper, against real cuts (issue 4)."""

from __future__ import annotations

import random
import time

import openai
import pytest

from llm_stream_otel import semconv as t
from llm_stream_otel.demo.fault_plan import answer_for
from llm_stream_otel.resilient import RetryPolicy, StreamTruncatedError, aresilient_stream, resilient_stream
from streaming import unique_prompt

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


def chat_args(fault, prompt=None):
    prompt = prompt or unique_prompt(fault)
    return dict(model="gpt-test", messages=[{"role": "user", "content": prompt}], extra_headers={"X-Fault": fault}), prompt


def text_of(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_restart_after_one_cut(instrumented, client):
    restarts = []
    kwargs, prompt = chat_args("reset_between;after=2;first=1;chunks=6")
    chunks = list(resilient_stream(client.chat.completions.create, policy=FAST, on_restart=lambda n, r: restarts.append((n, r)), **kwargs))
    assert restarts == [(2, t.REASON_CONNECTION_RESET)]
    # the consumer saw the partial attempt, then the full answer
    assert text_of(chunks).endswith("".join(answer_for(prompt, 6)))
    spans = instrumented.spans()
    parent = [s for s in spans if s.name.startswith("resilient")][0]
    attempts = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert [s.parent.span_id for s in attempts] == [parent.context.span_id] * 2
    assert attempts[1].attributes[t.RETRY_LAYER] == "helper"
    assert [link.context.span_id for link in attempts[1].links] == [attempts[0].context.span_id]
    assert parent.attributes[t.ATTEMPT] == 2 and parent.attributes[t.RECOVERED_AFTER_ATTEMPTS] == 2
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 1
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_continue_mode_delivers_the_full_text_exactly_once(instrumented, client):
    kwargs, prompt = chat_args("cut_mid_chunk;after=3;first=1;chunks=8")
    policy = RetryPolicy(initial_backoff=0.01, mode="continue")
    chunks = list(resilient_stream(client.chat.completions.create, policy=policy, **kwargs))
    assert text_of(chunks) == "".join(answer_for(prompt, 8))
    assert instrumented.total(t.METRIC_RECOVERIES) == 1
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 1


def test_missing_terminator_is_retried(instrumented, client):
    kwargs, _ = chat_args("missing_terminator;after=2;first=2")
    chunks = list(resilient_stream(client.chat.completions.create, policy=FAST, **kwargs))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 2
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_gives_up_with_the_last_underlying_exception(instrumented, client):
    kwargs, _ = chat_args("reset_mid_chunk;after=1")
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with pytest.raises(Exception) as info:
        list(resilient_stream(client.chat.completions.create, policy=policy, **kwargs))
    assert type(info.value).__name__ in ("APIConnectionError", "ReadError")
    assert len(instrumented.stream_spans()) == 3
    assert instrumented.total(t.METRIC_RECOVERIES) == 0
    parent = [s for s in instrumented.spans() if s.name.startswith("resilient")][0]
    assert parent.attributes[t.ERROR_TYPE] == type(info.value).__qualname__


def test_gives_up_on_silent_truncation_with_documented_error(instrumented, client):
    kwargs, _ = chat_args("missing_terminator;after=1")
    with pytest.raises(StreamTruncatedError) as info:
        list(resilient_stream(client.chat.completions.create, policy=RetryPolicy(max_attempts=2, initial_backoff=0.01), **kwargs))
    assert info.value.reason == t.REASON_MISSING_TERMINATOR and info.value.attempts == 2


@pytest.mark.parametrize("fault", ["length", "content_filter"])
def test_never_retries_model_truncation(instrumented, client, fault):
    kwargs, _ = chat_args(fault)
    chunks = list(resilient_stream(client.chat.completions.create, policy=FAST, **kwargs))
    assert chunks[-1].choices[0].finish_reason == fault
    assert len(instrumented.stream_spans()) == 1


def test_never_retries_a_4xx(instrumented, client):
    kwargs, _ = chat_args("no_such_fault")  # the server answers 400
    with pytest.raises(openai.BadRequestError):
        list(resilient_stream(client.chat.completions.create, policy=FAST, **kwargs))
    assert len(instrumented.stream_spans()) == 1


def test_retries_a_5xx_after_the_sdk_gave_up(instrumented, client):
    kwargs, _ = chat_args("http_500;first=1")
    chunks = list(resilient_stream(client.chat.completions.create, policy=FAST, **kwargs))
    assert chunks[-1].choices[0].finish_reason == "stop"
    outcomes = [s.attributes[t.OUTCOME] for s in sorted(instrumented.stream_spans(), key=lambda s: s.start_time)]
    assert outcomes == [t.OUTCOME_FAILED, t.OUTCOME_COMPLETED]
    # a failed (not truncated) first attempt is not a fix of a truncation
    assert instrumented.total(t.METRIC_RECOVERIES) == 0


def test_backoff_timing_within_bounds(client):
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.3)
    kwargs, _ = chat_args("reset_between;after=1;first=3")
    started = time.monotonic()
    list(resilient_stream(client.chat.completions.create, policy=policy, **kwargs))
    elapsed = time.monotonic() - started
    # delays: [0.05,0.1] + [0.1,0.2] + [0.15,0.3] (jitter in [0.5, 1] of 0.1, 0.2, 0.3)
    assert 0.30 <= elapsed < 0.6 + 1.0
    rng = random.Random(7)
    for retry in range(1, 6):
        nominal = min(0.3, 0.1 * 2 ** (retry - 1))
        assert nominal / 2 <= policy.backoff(retry, rng) <= nominal


def test_deadline_stops_retrying(client):
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=0.2, jitter=False, deadline=0.5)
    kwargs, _ = chat_args("reset_between;after=1")
    started = time.monotonic()
    with pytest.raises(Exception):
        list(resilient_stream(client.chat.completions.create, policy=policy, **kwargs))
    assert time.monotonic() - started < 1.0


def test_consumer_stopping_early_closes_the_stream(instrumented, client):
    kwargs, _ = chat_args("none;chunks=10")
    gen = resilient_stream(client.chat.completions.create, policy=FAST, **kwargs)
    next(gen)
    gen.close()
    assert [s.attributes[t.OUTCOME] for s in instrumented.stream_spans()] == [t.OUTCOME_ABANDONED]
    parent = [s for s in instrumented.spans() if s.name.startswith("resilient")][0]
    assert parent.attributes[t.OUTCOME] == t.OUTCOME_ABANDONED


async def test_async_restart_and_continue(instrumented, aclient):
    kwargs, prompt = chat_args("reset_mid_chunk;after=2;first=1;chunks=6")
    chunks = [c async for c in aresilient_stream(aclient.chat.completions.create, policy=FAST, **kwargs)]
    assert text_of(chunks).endswith("".join(answer_for(prompt, 6)))
    kwargs, prompt = chat_args("cut_mid_chunk;after=2;first=1;chunks=6")
    policy = RetryPolicy(initial_backoff=0.01, mode="continue")
    chunks = [c async for c in aresilient_stream(aclient.chat.completions.create, policy=policy, **kwargs)]
    assert text_of(chunks) == "".join(answer_for(prompt, 6))
    assert instrumented.total(t.METRIC_RECOVERIES) == 2


def test_responses_restart(instrumented, client):
    prompt = unique_prompt("resp")
    events = list(
        resilient_stream(
            client.responses.create, policy=FAST, model="gpt-test", input=prompt, extra_headers={"X-Fault": "error_event;after=1;first=1"}
        )
    )
    assert events[-1].type == "response.completed"
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_continue_mode_needs_chat():
    with pytest.raises(ValueError):
        resilient_stream(lambda **kw: None, policy=RetryPolicy(mode="continue"), model="m", input="x")
