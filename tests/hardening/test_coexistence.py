"""Coexisting with the other openai / httpx instrumentations (issue 8).

``opentelemetry-instrumentation-openai-v2`` wraps the same ``create`` methods
as we do, and ``opentelemetry-instrumentation-httpx`` traces the HTTP
requests underneath. In either order of instrumentation, and either order
of un-instrumentation:
- the app sees what it sees with no instrumentation at all;
- each instrumentation makes its own spans (one GenAI span each per stream,
  one HTTP span per request, all in one trace, nested);
- ours counts each stream once (no double counting);
- un-instrumenting one leaves the other fully working, and un-instrumenting
  both restores the SDK's original methods.

Skipped when those packages are not installed (they are test-only deps:
``opentelemetry-instrumentation-openai-v2`` + ``opentelemetry-util-genai``,
``opentelemetry-instrumentation-httpx``).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Iterator, List

import openai
import pytest
from opentelemetry.trace import SpanKind

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from otel_helpers import Telemetry, make_telemetry
from streaming import aconsume, consume

OURS = t.SCOPE_NAME
OPENAI_V2 = "opentelemetry.instrumentation.openai_v2"
GENAI_UTIL = "opentelemetry.util.genai"
HTTPX_SCOPE = "opentelemetry.instrumentation.httpx"
FAULTS = ("none", "reset_between;after=2")


def _openai_v2() -> Any:
    module = pytest.importorskip(OPENAI_V2, reason="opentelemetry-instrumentation-openai-v2 not installed")
    return module.OpenAIInstrumentor()


def _httpx() -> Any:
    module = pytest.importorskip("opentelemetry.instrumentation.httpx",
                                 reason="opentelemetry-instrumentation-httpx not installed")
    uses_httpx2 = "httpx2" in vars(importlib.import_module("openai._base_client"))
    if uses_httpx2:
        if not hasattr(module, "HTTPX2ClientInstrumentor"):
            pytest.skip("this opentelemetry-instrumentation-httpx cannot instrument httpx2 (openai 3.x)")
        return module.HTTPX2ClientInstrumentor()
    return module.HTTPXClientInstrumentor()


def _others(which: str) -> List[Any]:
    return {"openai_v2": lambda: [_openai_v2()], "httpx": lambda: [_httpx()],
            "both": lambda: [_openai_v2(), _httpx()]}[which]()


def _originals() -> dict:
    from openai.resources.chat import completions as chat
    from openai.resources.embeddings import AsyncEmbeddings, Embeddings

    owners = (chat.Completions, chat.AsyncCompletions, Embeddings, AsyncEmbeddings)
    return {owner: vars(owner)["create"] for owner in owners}


ORIGINALS = _originals()  # at collection time, before any test instruments anything


def _instrument(instrumentor: Any, telemetry: Telemetry) -> None:
    kwargs = dict(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    if isinstance(instrumentor, LLMStreamInstrumentor):
        kwargs["stall_threshold"] = 5.0
    instrumentor.instrument(**kwargs)


def _by_scope(telemetry: Telemetry, scope: str) -> List[Any]:
    """Spans of one instrumentation. openai-v2's spans come from its own scope or, on its newer
    code path, from ``opentelemetry.util.genai``'s handler."""
    if scope == OPENAI_V2:
        return [s for s in telemetry.spans() if s.instrumentation_scope.name.startswith((OPENAI_V2, GENAI_UTIL))]
    return [s for s in telemetry.spans() if s.instrumentation_scope.name.startswith(scope)]


def _our_points(telemetry: Telemetry, name: str) -> List[Any]:
    """Points of a metric from OUR scope only: openai-v2 records the same semconv names."""
    data = telemetry.reader.get_metrics_data()
    return [point for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
            if sm.scope.name == OURS for m in sm.metrics if m.name == name for point in m.data.data_points]


def _key(chunk: Any) -> Any:
    return type(chunk), chunk.model_dump(exclude={"id", "created"}, warnings=False)


@pytest.fixture(scope="module")
def plain_views(server) -> dict:
    assert not LLMStreamInstrumentor().is_instrumented_by_opentelemetry
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        return {fault: consume(client, "chat", fault, prompt="coexist") for fault in FAULTS}


@pytest.fixture
def cleanup() -> Iterator[List[Any]]:
    from opentelemetry import context

    started: List[Any] = []
    assert _originals() == ORIGINALS
    saved = context.get_current()
    yield started
    if context.get_current() is not saved:  # a leaked current span must not follow us into later tests
        context.attach(saved)
    for instrumentor in started:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    restored = _originals() == ORIGINALS
    for owner, method in ORIGINALS.items():  # never leak a wrapper into the next test, whoever's bug it is
        setattr(owner, "create", method)
    assert restored, "the SDK's methods were not restored"


def _run_streams(server: Any, plain_views: dict) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        for fault in FAULTS:
            chunks, exc = consume(client, "chat", fault, prompt="coexist")
            plain_chunks, plain_exc = plain_views[fault]
            assert [_key(c) for c in chunks] == [_key(c) for c in plain_chunks]
            assert type(exc) is type(plain_exc) and str(exc) == str(plain_exc)

    async def run_async() -> None:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        try:
            for fault in FAULTS:
                chunks, exc = await aconsume(client, "chat", fault, prompt="coexist")
                assert [_key(c) for c in chunks] == [_key(c) for c in plain_views[fault][0]]
                assert type(exc) is type(plain_views[fault][1])
        finally:
            await client.close()

    asyncio.run(run_async())


def _check_ours(telemetry: Telemetry, streams: int) -> None:
    ours = [s for s in _by_scope(telemetry, OURS) if s.kind == SpanKind.CLIENT]
    assert len(ours) == streams, [s.name for s in ours]
    assert sorted(s.attributes[t.OUTCOME] for s in ours) == sorted(
        [t.OUTCOME_COMPLETED, t.OUTCOME_TRUNCATED] * (streams // 2))
    assert sum(p.value for p in _our_points(telemetry, t.METRIC_OUTCOMES)) == streams  # no double counting
    assert sum(p.count for p in _our_points(telemetry, t.METRIC_DURATION)) == streams


_THEIR_UNWRAP_REMOVES_OURS = pytest.mark.xfail(
    strict=True,
    reason="openai-v2's _uninstrument uses opentelemetry's unwrap(), which removes the OUTERMOST wrapper: "
    "when we wrapped create() after it and it is uninstrumented first, it removes ours and keeps its own "
    "(not fixable on our side; reported upstream-worthy)",
)


def _cases() -> List[Any]:
    cases = []
    for which in ("openai_v2", "httpx", "both"):
        for ours_first in (True, False):
            for ours_removed_first in (True, False):
                marks = []
                if which != "httpx" and not ours_first and not ours_removed_first:
                    marks.append(_THEIR_UNWRAP_REMOVES_OURS)
                case_id = f"{which}-{'ours' if ours_first else 'theirs'}_first-remove_{'ours' if ours_removed_first else 'theirs'}_first"
                cases.append(pytest.param(which, ours_first, ours_removed_first, marks=marks, id=case_id))
    return cases


@pytest.mark.parametrize("which, ours_first, ours_removed_first", _cases())
def test_coexistence(server, plain_views, cleanup, which, ours_first, ours_removed_first):
    others = _others(which)
    ours = LLMStreamInstrumentor()
    telemetry = make_telemetry()
    order = [ours] + others if ours_first else others + [ours]
    for instrumentor in order:
        _instrument(instrumentor, telemetry)
        cleanup.append(instrumentor)

    _run_streams(server, plain_views)
    _check_ours(telemetry, 4)
    if which in ("openai_v2", "both"):
        theirs = _by_scope(telemetry, OPENAI_V2)
        assert len(theirs) == 4, [s.name for s in theirs]
    if which in ("httpx", "both"):
        http = _by_scope(telemetry, HTTPX_SCOPE)
        assert len(http) == 4, [s.name for s in http]
        genai_ids = {s.context.span_id for s in telemetry.spans() if s not in http}
        assert all(s.parent is not None and s.parent.span_id in genai_ids for s in http)
        if which == "httpx":  # the HTTP request is a child of our stream span
            assert {s.parent.span_id for s in http} == {s.context.span_id for s in _by_scope(telemetry, OURS)}

    # Remove one: the other keeps working, alone.
    before = {scope: len(_by_scope(telemetry, scope)) for scope in (OURS, OPENAI_V2, HTTPX_SCOPE)}
    removed, kept = ([ours], others) if ours_removed_first else (others, [ours])
    for instrumentor in removed:
        instrumentor.uninstrument()
    _run_streams(server, plain_views)
    new = {scope: len(_by_scope(telemetry, scope)) - before[scope] for scope in before}
    if ours_removed_first:
        assert new[OURS] == 0, "our wrapper is still in place after uninstrument()"
        if which in ("openai_v2", "both"):
            assert new[OPENAI_V2] == 4, "our uninstrument() removed openai-v2's wrapper"
        if which in ("httpx", "both"):
            assert new[HTTPX_SCOPE] == 4
    else:
        assert new[OURS] == 4, "un-instrumenting the other one removed ours"
        assert new[OPENAI_V2] == 0 and new[HTTPX_SCOPE] == 0
        assert sum(p.value for p in _our_points(telemetry, t.METRIC_OUTCOMES)) == 8
    for instrumentor in kept:
        instrumentor.uninstrument()


@pytest.mark.parametrize(
    "ours_outer",
    [
        False,
        pytest.param(True, marks=pytest.mark.xfail(
            strict=True,
            reason="openai-v2 (util-genai handler) attaches its context in create() and detaches it only at the "
            "end of the stream; when our wrapper is outside it, its detach restores OUR (ended) span as the "
            "current span, so every later span of the thread/task becomes its child (not fixable on our side "
            "without breaking its detach; instrument llm_stream BEFORE openai-v2)")),
    ],
    ids=["openai_v2_outer", "ours_outer"],
)
def test_no_context_leak_between_streams(server, plain_views, cleanup, ours_outer):
    """Consecutive streams are separate traces; nothing stays current after a stream ends."""
    from opentelemetry import trace

    theirs = _openai_v2()
    ours = LLMStreamInstrumentor()
    telemetry = make_telemetry()
    for instrumentor in ([theirs, ours] if ours_outer else [ours, theirs]):
        _instrument(instrumentor, telemetry)
        cleanup.append(instrumentor)
    _run_streams(server, plain_views)
    assert not trace.get_current_span().get_span_context().is_valid, "a span is still current"
    ours_spans = _by_scope(telemetry, OURS)
    assert len({s.context.trace_id for s in ours_spans}) == 4, "streams were chained into one trace"
    ours_ids = {s.context.span_id for s in ours_spans}
    assert all(s.parent is None or s.parent.span_id not in ours_ids for s in ours_spans)
