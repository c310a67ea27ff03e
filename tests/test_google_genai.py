"""The google-genai provider: each real fault, through the real client, gives the right telemetry.

The real ``google-genai`` client (3.x on httpx2, 2.x on httpx; async on aiohttp
and on httpx) streams from the fault server's Gemini API; the instrumentor
records into the real OTel SDK with in-memory exporters. Sync and async
(``client.models`` / ``client.aio.models``), chat sessions, Vertex AI clients,
SDK retries (``HttpRetryOptions``), application retries and the fix rate, and
the resilient helper.
"""

from __future__ import annotations

import gc
import itertools
import types as pytypes
from typing import Any, Dict, List, Optional, Tuple

import pytest
from opentelemetry.trace import StatusCode

genai = pytest.importorskip("google.genai")

from google.genai import errors, types  # noqa: E402

from llm_stream_otel import semconv as t  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402
from llm_stream_otel.providers.google_genai.chunks import (  # noqa: E402
    FINISH_OUTCOMES,
    FINISH_REASONS,
    UNSPECIFIED,
    read_generate_content_chunk,
)
from llm_stream_otel.resilient import RetryPolicy, aresilient_stream, resilient_stream  # noqa: E402
from llm_stream_otel.stream.monitor import StreamMonitor  # noqa: E402

MODEL = "gemini-2.5-flash"
CHUNKS = 4
PROMPT_TOKENS = 3  # "prompt <fault> #n" -> 3 words
_counter = itertools.count()

try:
    import aiohttp  # noqa: F401

    ASYNC_TRANSPORTS = ["aiohttp", "httpx"]
except ImportError:  # pragma: no cover - CI installs it
    ASYNC_TRANSPORTS = ["httpx"]


def unique_prompt(label: str) -> str:
    return f"prompt {label.split(';')[0]} #{next(_counter)}"


@pytest.fixture(scope="module")
def gserver():
    with FaultServer(chunks=CHUNKS) as srv:
        yield srv


@pytest.fixture
def srv(gserver: FaultServer) -> FaultServer:
    gserver.reset()
    return gserver


def _httpx_module() -> Any:
    from google.genai import _api_client

    return __import__(_api_client._get_http_client_backend())


@pytest.fixture
def make_client():
    """Real clients pointed at the loopback server, kept alive (and closed) by the test."""
    made: List[Any] = []

    def build(srv: FaultServer, fault: str = "none", *, vertex: bool = False, transport: str = "aiohttp",
              retry: Optional[types.HttpRetryOptions] = None, timeout_ms: int = 5_000) -> Any:
        extra: Dict[str, Any] = {}
        if transport == "httpx":
            extra["async_client_args"] = {"transport": _httpx_module().AsyncHTTPTransport()}
        options = types.HttpOptions(base_url=srv.root_url, headers={"X-Fault": fault}, timeout=timeout_ms,
                                    retry_options=retry, **extra)
        if vertex:
            from google.oauth2.credentials import Credentials

            client = genai.Client(vertexai=True, project="proj", location="us-central1",
                                  credentials=Credentials(token="test-token"), http_options=options)
        else:
            client = genai.Client(api_key="test-key", http_options=options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def consume(client: Any, prompt: str, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    chunks: List[Any] = []
    try:
        for chunk in client.models.generate_content_stream(model=MODEL, contents=prompt, **kw):
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


async def aconsume(client: Any, prompt: str, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    chunks: List[Any] = []
    try:
        async for chunk in await client.aio.models.generate_content_stream(model=MODEL, contents=prompt, **kw):
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


# fault -> (outcome, truncation reason, finish reasons, chunks the app gets, does it raise?)
SCENARIOS: Dict[str, Tuple[str, Optional[str], Tuple[str, ...], int, bool]] = {
    "none": (t.OUTCOME_COMPLETED, None, ("stop",), CHUNKS + 1, False),
    "length": (t.OUTCOME_LENGTH, None, ("length",), CHUNKS + 1, False),
    "content_filter": (t.OUTCOME_CONTENT_FILTER, None, ("safety",), CHUNKS + 1, False),
    "prompt_blocked": (t.OUTCOME_CONTENT_FILTER, None, ("prompt_blocked",), 1, False),
    "tool_calls": (t.OUTCOME_COMPLETED, None, ("stop",), 2, False),
    "missing_terminator;after=2": (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR, (), 2, False),
    "reset_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, (), 2, True),
    "reset_between;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, (), 2, True),
    "reset_between;after=0": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET, (), 0, True),
    "cut_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, (), 2, True),
    "idle_cut;after=2;seconds=0.2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ, (), 2, True),
    "error_event;after=2": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, (), 2, True),
    "error_event;after=0": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, (), 0, True),
    "stall;after=2;seconds=1.5": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, (), 2, True),  # client timeout 0.6 s
    "hang;seconds=1.5": (t.OUTCOME_TRUNCATED, t.REASON_READ_TIMEOUT, (), 0, True),  # headers, then silence
    "http_429": (t.OUTCOME_FAILED, None, (), 0, True),
    "http_500": (t.OUTCOME_FAILED, None, (), 0, True),
    "http_503": (t.OUTCOME_FAILED, None, (), 0, True),
    "http_502": (t.OUTCOME_FAILED, None, (), 0, True),
    "http_504": (t.OUTCOME_FAILED, None, (), 0, True),
}
_TIMEOUT_FAULTS = ("stall;after=2;seconds=1.5", "hang;seconds=1.5")
ASYNC_FAULTS = ["none", "content_filter", "prompt_blocked", "missing_terminator;after=2", "reset_mid_chunk;after=2",
                "cut_mid_chunk;after=2", "error_event;after=0", "stall;after=2;seconds=1.5", "http_503"]


def _config(fault: str) -> Optional[types.GenerateContentConfig]:
    if fault != "tool_calls":
        return None
    return types.GenerateContentConfig(tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup")])])


def check(telemetry: Any, fault: str, chunks: List[Any], exc: Optional[BaseException],
          provider: str = t.PROVIDER_GCP_GEMINI) -> Dict[str, Any]:
    outcome, reason, finish, n_chunks, raises = SCENARIOS[fault]
    assert (exc is not None) == raises, exc
    assert len(chunks) == n_chunks
    span = telemetry.span()
    attrs = dict(span.attributes)
    assert span.name == f"generate_content {MODEL}"
    assert attrs[t.GEN_AI_OPERATION_NAME] == t.OPERATION_GENERATE_CONTENT
    assert attrs[t.GEN_AI_PROVIDER_NAME] == provider
    assert attrs[t.GEN_AI_REQUEST_MODEL] == MODEL and attrs[t.SERVER_ADDRESS] == "127.0.0.1"
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == (outcome, reason), (attrs, repr(exc))
    assert attrs[t.CHUNKS] == n_chunks
    assert tuple(attrs.get(t.GEN_AI_RESPONSE_FINISH_REASONS, ())) == finish
    if outcome in (t.OUTCOME_TRUNCATED, t.OUTCOME_FAILED):
        assert span.status.status_code == StatusCode.ERROR
        assert attrs[t.ERROR_TYPE] == (type(exc).__qualname__ if exc else reason)
    else:
        assert span.status.status_code == StatusCode.UNSET and t.ERROR_TYPE not in attrs
    if outcome == t.OUTCOME_FAILED:
        assert attrs["http.response.status_code"] == int(fault[-3:])
        assert t.GEN_AI_USAGE_INPUT_TOKENS not in attrs
    else:
        assert attrs["http.response.status_code"] == 200
    if n_chunks:
        assert attrs[t.GEN_AI_RESPONSE_MODEL] == MODEL
        assert attrs[t.GEN_AI_RESPONSE_ID] == chunks[0].response_id
        last = chunks[-1].usage_metadata
        assert attrs[t.GEN_AI_USAGE_INPUT_TOKENS] == last.prompt_token_count == PROMPT_TOKENS
        if last.candidates_token_count is not None:
            assert attrs[t.GEN_AI_USAGE_OUTPUT_TOKENS] == last.candidates_token_count + last.thoughts_token_count
            assert attrs[t.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == last.thoughts_token_count
    assert telemetry.total(t.METRIC_OUTCOMES) == 1
    assert telemetry.total(t.METRIC_OUTCOMES, llm__stream__outcome=outcome, gen_ai__provider__name=provider) == 1
    (point,) = telemetry.points(t.METRIC_OUTCOMES)
    assert dict(point.attributes).get(t.TRUNCATION_REASON) == reason
    assert dict(point.attributes)[t.GEN_AI_OPERATION_NAME] == t.OPERATION_GENERATE_CONTENT
    return attrs


def _timeout(fault: str) -> int:
    return 600 if fault in _TIMEOUT_FAULTS else 5_000


@pytest.mark.parametrize("fault", list(SCENARIOS))
def test_sync_fault_outcomes(instrumented, make_client, srv, fault):
    client = make_client(srv, fault, timeout_ms=_timeout(fault))
    chunks, exc = consume(client, unique_prompt(fault), config=_config(fault))
    check(instrumented, fault, chunks, exc)


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
@pytest.mark.parametrize("fault", ASYNC_FAULTS)
async def test_async_fault_outcomes(instrumented, make_client, srv, fault, transport):
    client = make_client(srv, fault, transport=transport, timeout_ms=_timeout(fault))
    chunks, exc = await aconsume(client, unique_prompt(fault))
    check(instrumented, fault, chunks, exc)


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
async def test_async_reset_reads_as_a_reset_on_either_transport(instrumented, make_client, srv, transport):
    """aiohttp names the reset only in its ClientPayloadError's message; the cause reads the same as httpx's."""
    client = make_client(srv, "reset_between;after=2", transport=transport)
    chunks, exc = await aconsume(client, unique_prompt("reset"))
    attrs = check(instrumented, "reset_between;after=2", chunks, exc)
    assert attrs[t.ERROR_CAUSE] == "ConnectionResetError"


def test_the_app_gets_the_sdk_stream_and_its_chunks(instrumented, make_client, srv):
    client = make_client(srv)
    stream = client.models.generate_content_stream(model=MODEL, contents=unique_prompt("same"))
    assert isinstance(stream, pytypes.GeneratorType)  # the proxy forwards the class
    assert srv.requests == []  # nothing sent before the first next(), as without us
    first = next(stream)
    assert isinstance(first, types.GenerateContentResponse) and first.text
    rest = list(stream)
    assert rest[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert instrumented.span().attributes[t.CHUNKS] == 1 + len(rest)


async def test_async_stream_is_an_async_generator_sent_at_the_first_anext(instrumented, make_client, srv):
    client = make_client(srv, "http_429")
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=unique_prompt("lazy"))
    assert isinstance(stream, pytypes.AsyncGeneratorType) and srv.requests == []
    with pytest.raises(errors.ClientError):
        await stream.__anext__()
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_FAILED


def test_breaking_early_and_closing_is_abandoned(instrumented, make_client, srv):
    stream = make_client(srv).models.generate_content_stream(model=MODEL, contents=unique_prompt("early"))
    next(stream)
    stream.close()
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_ABANDONED


def test_dropping_the_stream_is_abandoned(instrumented, make_client, srv):
    stream = make_client(srv).models.generate_content_stream(model=MODEL, contents=unique_prompt("dropped"))
    next(stream)
    del stream
    gc.collect()
    assert instrumented.span().attributes[t.OUTCOME] == t.OUTCOME_ABANDONED


def test_vertex_ai_client(instrumented, make_client, srv):
    client = make_client(srv, "length", vertex=True)
    stream = client.models.generate_content_stream(
        model=f"projects/proj/locations/us-central1/publishers/google/models/{MODEL}", contents=unique_prompt("vertex"))
    chunks = list(stream)
    assert srv.requests[-1].path.startswith("/v1beta1/projects/proj/locations/us-central1/publishers/google/models/")
    attrs = check(instrumented, "length", chunks, None, provider=t.PROVIDER_GCP_VERTEX_AI)
    assert "proj" not in attrs[t.GEN_AI_REQUEST_MODEL]


def test_chat_turn_is_one_span(instrumented, make_client, srv):
    chat = make_client(srv, "content_filter").chats.create(model=MODEL)
    chunks = list(chat.send_message_stream(unique_prompt("chat")))
    check(instrumented, "content_filter", chunks, None)


async def test_async_chat_turn_is_one_span(instrumented, make_client, srv):
    chat = make_client(srv, "cut_mid_chunk;after=2").aio.chats.create(model=MODEL)
    chunks: List[Any] = []
    with pytest.raises(Exception) as info:
        async for chunk in await chat.send_message_stream(unique_prompt("achat")):
            chunks.append(chunk)
    check(instrumented, "cut_mid_chunk;after=2", chunks, info.value)


def test_request_parameters_on_the_span(instrumented, make_client, srv):
    config = types.GenerateContentConfig(temperature=0.5, top_p=0.9, top_k=20, max_output_tokens=64, seed=7)
    consume(make_client(srv), unique_prompt("params"), config=config)
    attrs = instrumented.span().attributes
    assert (attrs["gen_ai.request.temperature"], attrs["gen_ai.request.top_p"], attrs["gen_ai.request.top_k"],
            attrs["gen_ai.request.max_tokens"], attrs["gen_ai.request.seed"]) == (0.5, 0.9, 20, 64, 7)


def test_no_prompt_or_completion_text_in_telemetry(instrumented, make_client, srv):
    prompt = unique_prompt("secret-words")
    chunks, _ = consume(make_client(srv), prompt)
    text = "".join(c.text or "" for c in chunks)
    for span in instrumented.spans():
        values = " ".join(str(v) for v in span.attributes.values())
        assert prompt not in values and text.strip() not in values and "test-key" not in values


# --------------------------------------------------------------------------- retries

FAST_SDK_RETRY = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0.0)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_sdk_retries_are_counted_then_the_stream_completes(instrumented, make_client, srv, asynchronous):
    client = make_client(srv, "http_503;first=2", retry=FAST_SDK_RETRY)
    prompt = unique_prompt("sdk")
    chunks, exc = await aconsume(client, prompt) if asynchronous else consume(client, prompt)
    assert exc is None and len(chunks) == CHUNKS + 1
    assert len(srv.requests) == 3
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.SDK_RETRIES]) == (t.OUTCOME_COMPLETED, 2)
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 2
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0


def test_sdk_retries_exhausted_is_one_failed_call(instrumented, make_client, srv):
    client = make_client(srv, "http_500", retry=types.HttpRetryOptions(attempts=2, initial_delay=0.01, jitter=0.0))
    chunks, exc = consume(client, unique_prompt("exhausted"))
    assert isinstance(exc, errors.ServerError) and len(srv.requests) == 2
    attrs = instrumented.span().attributes
    assert (attrs[t.OUTCOME], attrs[t.SDK_RETRIES], attrs["http.response.status_code"]) == (t.OUTCOME_FAILED, 1, 500)


def test_no_sdk_retry_without_retry_options(instrumented, make_client, srv):
    consume(make_client(srv, "http_503"), unique_prompt("noretry"))
    assert len(srv.requests) == 1
    assert instrumented.total(t.METRIC_RETRIES) == 0


def _fix_rate(telemetry: Any) -> float:
    cut = telemetry.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_TRUNCATED, llm__stream__is_retry=False)
    return telemetry.total(t.METRIC_RECOVERIES) / cut


def test_application_retry_after_a_cut_is_fixed(instrumented, make_client, srv):
    client = make_client(srv, "reset_mid_chunk;after=1;first=1")
    prompt = unique_prompt("app")
    _, exc = consume(client, prompt)
    assert exc is not None
    chunks, exc = consume(client, prompt)
    assert exc is None
    first, second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert first.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED and first.attributes[t.IS_RETRY] is False
    assert second.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED and second.attributes[t.IS_RETRY] is True
    assert second.attributes[t.RETRY_LAYER] == "application"
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 1
    assert instrumented.total(t.METRIC_RECOVERIES) == 1
    assert _fix_rate(instrumented) == 1.0


def test_another_prompt_is_not_a_retry(instrumented, make_client, srv):
    client = make_client(srv, "reset_between;after=1")
    consume(client, unique_prompt("a"))
    consume(client, unique_prompt("b"))
    assert instrumented.total(t.METRIC_RETRIES) == 0


def test_resilient_restart_after_a_cut(instrumented, make_client, srv):
    client = make_client(srv, "cut_mid_chunk;after=2;first=1")
    restarts: List[Tuple[int, str]] = []
    policy = RetryPolicy(initial_backoff=0.01, jitter=False)
    chunks = list(resilient_stream(client.models.generate_content_stream, policy=policy,
                                   on_restart=lambda n, r: restarts.append((n, r)), model=MODEL,
                                   contents=unique_prompt("resilient")))
    assert restarts == [(2, t.REASON_INCOMPLETE_READ)]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    spans = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert [s.attributes[t.OUTCOME] for s in spans] == [t.OUTCOME_TRUNCATED, t.OUTCOME_COMPLETED]
    assert spans[1].attributes[t.RETRY_LAYER] == t.RETRY_LAYER_HELPER
    (parent,) = [s for s in instrumented.spans() if s.name.startswith("resilient")]
    assert parent.attributes[t.RECOVERED_AFTER_ATTEMPTS] == 2
    assert all(s.parent.span_id == parent.context.span_id for s in spans)
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 1


async def test_async_resilient_retries_an_error_event_and_a_503(instrumented, make_client, srv):
    policy = RetryPolicy(initial_backoff=0.01, jitter=False)
    for fault in ("error_event;after=1;first=1", "http_503;first=1"):
        client = make_client(srv, fault, transport="httpx")
        chunks = [c async for c in aresilient_stream(client.aio.models.generate_content_stream, policy=policy,
                                                     model=MODEL, contents=unique_prompt(fault))]
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 2
    # a recovery is a CUT call completed later; a request that failed (503) is not a cut
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_resilient_never_retries_a_content_filter_or_a_4xx(instrumented, make_client, srv):
    policy = RetryPolicy(initial_backoff=0.01, jitter=False)
    chunks = list(resilient_stream(make_client(srv, "prompt_blocked").models.generate_content_stream, policy=policy,
                                   model=MODEL, contents=unique_prompt("blocked")))
    assert len(chunks) == 1
    with pytest.raises(errors.ClientError):
        list(resilient_stream(make_client(srv, "http_429").models.generate_content_stream,
                              policy=RetryPolicy(initial_backoff=0.01, max_attempts=1), model=MODEL,
                              contents=unique_prompt("429")))
    assert len(srv.requests) == 2


# --------------------------------------------------------------------------- the chunk reader, pure


def test_every_finish_reason_of_the_sdk_is_mapped_on_purpose():
    values = {member.value for member in types.FinishReason}
    assert values - {UNSPECIFIED} <= set(FINISH_REASONS), values - set(FINISH_REASONS) - {UNSPECIFIED}
    for name, outcome in FINISH_REASONS.values():
        assert FINISH_OUTCOMES[name] == outcome


@pytest.mark.parametrize("reason, outcome", [
    ("STOP", t.OUTCOME_COMPLETED), ("MAX_TOKENS", t.OUTCOME_LENGTH), ("SAFETY", t.OUTCOME_CONTENT_FILTER),
    ("RECITATION", t.OUTCOME_CONTENT_FILTER), ("BLOCKLIST", t.OUTCOME_CONTENT_FILTER),
    ("PROHIBITED_CONTENT", t.OUTCOME_CONTENT_FILTER), ("SPII", t.OUTCOME_CONTENT_FILTER),
    ("IMAGE_SAFETY", t.OUTCOME_CONTENT_FILTER), ("CONTINUATION", t.OUTCOME_LENGTH),
    ("MALFORMED_FUNCTION_CALL", t.OUTCOME_COMPLETED), ("OTHER", t.OUTCOME_COMPLETED),
])
def test_finish_reason_outcomes(reason, outcome):
    monitor = _monitor()
    read_generate_content_chunk(monitor, _chunk(finish_reason=reason))
    monitor.end(1.0)
    assert monitor.outcome == outcome


def _monitor() -> StreamMonitor:
    return StreamMonitor(0.0, 10.0, reader=read_generate_content_chunk, finish_outcomes=FINISH_OUTCOMES)


def _chunk(text: str = "x", finish_reason: Optional[str] = None, **usage: int) -> Any:
    return types.GenerateContentResponse.model_validate({
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finish_reason": finish_reason, "index": 0}],
        "usage_metadata": usage or None,
        "response_id": "resp-1",
        "model_version": MODEL,
    })


def test_unspecified_finish_reason_is_no_terminator():
    monitor = _monitor()
    read_generate_content_chunk(monitor, _chunk(finish_reason=UNSPECIFIED))
    monitor.end(1.0)
    assert (monitor.outcome, monitor.reason) == (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR)


def test_a_finish_reason_newer_than_the_table_is_completed_and_recorded():
    monitor = _monitor()
    with pytest.warns(UserWarning):  # the SDK's CaseInSensitiveEnum warns about the unknown value
        chunk = _chunk(finish_reason="BRAND_NEW_REASON")
    read_generate_content_chunk(monitor, chunk)
    monitor.end(1.0)
    assert (monitor.outcome, monitor.finish_reasons) == (t.OUTCOME_COMPLETED, ["brand_new_reason"])


def test_usage_is_the_last_running_total_with_thoughts_and_cached_tokens():
    monitor = _monitor()
    read_generate_content_chunk(monitor, _chunk(prompt_token_count=10, candidates_token_count=1, thoughts_token_count=5,
                                                cached_content_token_count=4))
    read_generate_content_chunk(monitor, _chunk(finish_reason="STOP", prompt_token_count=10, candidates_token_count=3,
                                                thoughts_token_count=5, cached_content_token_count=4))
    assert (monitor.input_tokens, monitor.output_tokens, monitor.reasoning_tokens, monitor.cache_read_tokens) == (10, 8, 5, 4)
    assert (monitor.response_id, monitor.response_model) == ("resp-1", MODEL)


def test_opted_in_content_skips_thoughts():
    monitor = StreamMonitor(0.0, 10.0, reader=read_generate_content_chunk, content_limit=100)
    chunk = types.GenerateContentResponse.model_validate({"candidates": [{"content": {"parts": [
        {"text": "thinking...", "thought": True}, {"text": "answer"}], "role": "model"}}]})
    read_generate_content_chunk(monitor, chunk)
    assert monitor.content == ["answer"]


# --------------------------------------------------------------------------- the demo's Gemini traffic


def test_the_demo_drives_gemini_traffic(instrumented, srv):
    from llm_stream_otel.demo.scenarios import GEMINI_SCENARIOS, SCENARIOS, run_scenario

    assert not [s for s in SCENARIOS if s.endpoint == "gemini"]  # the default demo: openai only
    gemini = list(GEMINI_SCENARIOS)
    assert gemini
    results = {s.name: run_scenario(s, srv.base_url, unique_prompt(s.fault)) for s in gemini}
    spans = instrumented.stream_spans()
    providers = {s.attributes[t.GEN_AI_PROVIDER_NAME] for s in spans}
    outcomes = {(s.attributes[t.OUTCOME], s.attributes.get(t.TRUNCATION_REASON)) for s in spans}
    assert providers == {t.PROVIDER_GCP_GEMINI, t.PROVIDER_GCP_VERTEX_AI}
    assert {(t.OUTCOME_COMPLETED, None), (t.OUTCOME_CONTENT_FILTER, None), (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR),
            (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET), (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT),
            (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ)} <= outcomes
    assert results["gemini, 503 then ok (SDK retries)"] == "ok"
    assert results["gemini, resilient helper, restart"] == "ok"
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 1
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="helper") == 1


def test_a_cut_streams_usage_so_far_is_recorded_without_error_type(instrumented, make_client, srv):
    """Gemini's running usage survives a cut; semconv's token usage metric carries no error.type."""
    consume(make_client(srv, "reset_between;after=2"), unique_prompt("cut-usage"))
    assert instrumented.span().attributes[t.GEN_AI_USAGE_INPUT_TOKENS] == PROMPT_TOKENS
    sets = instrumented.attribute_sets(t.METRIC_TOKEN_USAGE)
    assert sorted(s[t.GEN_AI_TOKEN_TYPE] for s in sets) == ["input", "output"]
    assert all(t.ERROR_TYPE not in s for s in sets)
    assert any(t.ERROR_TYPE in s for s in instrumented.attribute_sets(t.METRIC_DURATION))


def test_a_connect_error_is_failed(instrumented):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=f"http://127.0.0.1:{port}/", timeout=2_000))
    try:
        chunks, exc = consume(client, unique_prompt("refused"))
    finally:
        client.close()
    assert chunks == [] and exc is not None
    attrs = instrumented.span().attributes
    assert attrs[t.OUTCOME] == t.OUTCOME_FAILED and t.TRUNCATION_REASON not in attrs
    assert attrs[t.ERROR_CAUSE] == "ConnectionRefusedError"


def test_demo_with_gemini_runs():
    from llm_stream_otel.demo.run import DemoOptions, run_demo

    lines: List[str] = []
    assert run_demo(DemoOptions(streams=10, gemini=True, prometheus_port=0, plain=True, seed=4, chunk_delay=0.0),
                    out=lines.append) == 0
    text = "\n".join(lines)
    streams = int(next(line.split()[-1] for line in text.splitlines() if line.startswith("streams")))
    assert streams >= 10 and "demo-not-a-real-key" not in text
