"""The real-streams corpus through the real client (issue 12).

Every body of ``../shared/real-streams/`` is served verbatim by a loopback
server, and cut in the ways of ``support.corpus.FAULT_KINDS``, to the real
``openai`` client (``AzureOpenAI`` for Azure hosts), sync and async, with the
instrumentation on. What the span says is compared with an oracle computed
from the served bytes alone (``support.corpus.expect``). The default run takes
a seeded sample; ``-m slow`` runs the whole corpus and prints the table.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time

import openai
import pytest

from llm_stream_otel import semconv as t
from support import corpus
from support.replay_server import ReplayServer

# Bodies the sample always holds: the shapes issue 12 is about.
MUST = (
    "pydantic-ai__test_snowflake_model_streaming",  # [DONE] and usage, never a finish_reason
    "pydantic-ai__test_openrouter_stream_error",  # length, then an error object carrying the usage
    "openinference__TestTokenCounts.test_groq",  # usage only in x_groq.usage
    "openllmetry__test_chat_streaming",  # Azure: a first chunk with empty id and model
    "pydantic-ai__test_tool_use_failed_error_streaming",  # Groq error object, no finish
)
SAMPLE_SEED = 12
SAMPLE_SIZE = 20
_tokens = itertools.count()


def sample() -> list:
    """MUST, plus a seeded draw of the bodies under 150 events (the SDK's parsing is the cost)."""
    rest = [n for n in corpus.names() if n not in MUST and corpus.event_count(n) < 150]
    return list(MUST) + random.Random(SAMPLE_SEED).sample(rest, SAMPLE_SIZE)


def _request(body: corpus.Body, token: str) -> tuple:
    extra = {"extra_headers": {"X-Case": token}, "stream": True, "model": body.model}
    if body.kind == "chat":
        return "chat", dict(messages=[{"role": "user", "content": "hi"}], **extra)
    if body.kind == "completions":
        return "completions", dict(prompt="hi", **extra)
    return "responses", dict(input="hi", **extra)


def _resource(client, kind):
    return {"chat": lambda: client.chat.completions, "completions": lambda: client.completions,
            "responses": lambda: client.responses}[kind]()


def _observed(span) -> dict:
    a = span.attributes
    return dict(
        outcome=a.get(t.OUTCOME),
        reason=a.get(t.TRUNCATION_REASON),
        finish_reasons=list(a.get(t.GEN_AI_RESPONSE_FINISH_REASONS) or []),
        chunks=a.get(t.CHUNKS),
        input_tokens=a.get(t.GEN_AI_USAGE_INPUT_TOKENS),
        output_tokens=a.get(t.GEN_AI_USAGE_OUTPUT_TOKENS),
        response_id=a.get(t.GEN_AI_RESPONSE_ID),
        response_model=a.get(t.GEN_AI_RESPONSE_MODEL),
        finish_reason_missing=bool(a.get(t.FINISH_REASON_MISSING)),
        error_after_end=bool(a.get(t.ERROR_AFTER_END)),
    )


def _expected(exp: corpus.Expected) -> dict:
    return dict(
        outcome=exp.outcome, reason=exp.reason, finish_reasons=exp.finish_reasons, chunks=exp.chunks,
        input_tokens=exp.input_tokens, output_tokens=exp.output_tokens, response_id=exp.response_id,
        response_model=exp.response_model, finish_reason_missing=exp.finish_reason_missing,
        error_after_end=exp.error_after_end,
    )


def _cases(names):
    for name in names:
        body = corpus.load(name)
        for kind in corpus.FAULT_KINDS:
            derived = corpus.derive(body, kind)
            if derived is not None:
                yield body, kind, derived


def _check(telemetry, results, body, kind, served, ending, items, exc, mode):
    exp = corpus.expect(body, served, ending)
    spans = telemetry.stream_spans()
    telemetry.exporter.clear()
    label = f"{mode} {kind} {body.name}"
    if len(spans) != 1:
        results.add(kind, False, f"{label}: {len(spans)} spans")
        return
    observed, wanted = _observed(spans[0]), _expected(exp)
    app_ok = (exc is not None) == exp.raises and len(items) == exp.chunks
    diff = {k: (observed[k], wanted[k]) for k in wanted if observed[k] != wanted[k]}
    if not app_ok:
        diff["app"] = (len(items), type(exc).__name__ if exc else None, exp.chunks, exp.raises)
    results.add(kind, not diff, f"{label}: {diff}")


def _clients(server):
    common = dict(api_key="sk-test", max_retries=0)
    azure = dict(azure_endpoint=server.origin, api_version="2024-02-01", **common)
    return (
        (openai.OpenAI(base_url=server.base_url, **common), openai.AzureOpenAI(**azure)),
        (openai.AsyncOpenAI(base_url=server.base_url, **common), openai.AsyncAzureOpenAI(**azure)),
    )


def run_corpus(telemetry, names, progress: bool = False) -> corpus.Results:
    results = corpus.Results()
    with ReplayServer() as server:
        (sync, sync_azure), (aio, aio_azure) = _clients(server)
        cases = list(_cases(names))
        for number, (body, kind, (served, ending)) in enumerate(cases, 1):
            token = f"c{next(_tokens)}"
            server.add(token, served, ending)
            endpoint, kwargs = _request(body, token)
            items, exc = [], None
            try:
                for item in _resource(sync_azure if body.azure else sync, endpoint).create(**kwargs):
                    items.append(item)
            except Exception as error:  # noqa: BLE001
                exc = error
            _check(telemetry, results, body, kind, served, ending, items, exc, "sync")
            if progress and number % 200 == 0:
                print(f"== corpus: {number}/{len(cases)} sync cases", file=sys.stderr, flush=True)

        async def run_async() -> None:
            for number, (body, kind, (served, ending)) in enumerate(cases, 1):
                if progress and number % 200 == 0:
                    print(f"== corpus: {number}/{len(cases)} async cases", file=sys.stderr, flush=True)
                token = f"c{next(_tokens)}"
                server.add(token, served, ending)
                endpoint, kwargs = _request(body, token)
                items, exc = [], None
                try:
                    stream = await _resource(aio_azure if body.azure else aio, endpoint).create(**kwargs)
                    async for item in stream:
                        items.append(item)
                except Exception as error:  # noqa: BLE001
                    exc = error
                _check(telemetry, results, body, kind, served, ending, items, exc, "async")
            await aio.close()
            await aio_azure.close()

        asyncio.run(run_async())
        sync.close()
        sync_azure.close()
    return results


def test_corpus_sample(instrumented):
    started = time.perf_counter()
    results = run_corpus(instrumented, sample())
    assert not results.wrong, "\n".join(results.wrong[:20]) + "\n" + results.table()
    assert sum(row[0] for row in results.by_kind.values()) > 200
    assert time.perf_counter() - started < 60


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_corpus_whole(instrumented):
    started = time.perf_counter()
    results = run_corpus(instrumented, corpus.names(), progress=True)
    table = results.table()
    print(f"\nopenai {openai.__version__}: whole corpus in {time.perf_counter() - started:.1f} s\n{table}")
    path = os.environ.get("LLM_STREAM_CORPUS_TABLE")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"openai {openai.__version__}\n{table}\n")
    assert not results.wrong, "\n".join(results.wrong[:30]) + "\n" + table
