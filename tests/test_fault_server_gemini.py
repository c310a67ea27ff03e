"""The fault server's Gemini API against the REAL google-genai client, uninstrumented.

Each fault must reach the app as it would from Google: the same chunk objects,
finish reasons, usage, and the same exceptions. Observed (3.x on httpx2, 2.x on
httpx; async on aiohttp when it is installed, else on httpx):

* reset_* : httpx[2].ReadError <- httpcore[2].ReadError [<- anyio.BrokenResourceError]
  <- ConnectionResetError. aiohttp: ClientPayloadError <- TransferEncodingError, the
  ConnectionResetError only named in the message.
* the stream object: sync, a generator; async, ``await`` returns an async generator.
  Either way the request is sent at the first ``next()`` / ``__anext__()``.
* cut_mid_chunk / idle_cut: httpx[2].RemoteProtocolError "(incomplete chunked read)";
  aiohttp: ClientPayloadError <- TransferEncodingError (no reset named).
* error_event: ``errors.ServerError`` (code 500, status INTERNAL) raised by the SDK
  itself while iterating, after the chunks before it were yielded.
* http_4xx/5xx: ``errors.ClientError`` / ``errors.ServerError`` with ``code``, raised
  at the first ``next()``.
* missing_terminator: no exception: the iteration just ends, the last chunk has no
  finish reason (Gemini has no [DONE]).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

genai = pytest.importorskip("google.genai")

from google.genai import errors, types  # noqa: E402

from llm_stream_otel.demo.fault_plan import FaultSettings, Fault, RequestInfo, _Ids, answer_for, resolve_settings  # noqa: E402
from llm_stream_otel.demo.fault_server import ROUTES, FaultServer  # noqa: E402
from llm_stream_otel.demo.gemini_events import GEMINI, GeminiEvents, gemini_request_info  # noqa: E402

CHUNKS = 4
PROMPT = "hello there"
ANSWER = answer_for(PROMPT, CHUNKS)
MODEL = "gemini-2.5-flash"
MAJOR = int(genai.__version__.split(".")[0])

try:
    import aiohttp  # noqa: F401

    HAS_AIOHTTP = True
except ImportError:  # pragma: no cover - CI installs it
    HAS_AIOHTTP = False


def _httpx_module() -> Any:
    """The httpx flavour this SDK major sends with (3.x: httpx2, 2.x: httpx)."""
    from google.genai import _api_client

    backend = _api_client._get_http_client_backend()
    return __import__(backend)


@pytest.fixture(scope="module")
def server():
    with FaultServer(chunks=CHUNKS) as srv:
        yield srv


@pytest.fixture
def srv(server: FaultServer) -> FaultServer:
    server.reset()
    return server


def _client(srv: FaultServer, fault: str = "none", *, vertex: Optional[str] = None, async_transport: str = "default",
                retry: Optional[types.HttpRetryOptions] = None) -> Any:
    """A real client pointed at the loopback server, the fault in a default header.

    ``vertex``: None (Gemini Developer API, API key), "express" (Vertex with an API key)
    or "project" (Vertex with project/location and a static OAuth token).
    ``async_transport``: "default" (aiohttp when installed) or "httpx" (forced).
    """
    extra: Dict[str, Any] = {}
    if async_transport == "httpx":
        extra["async_client_args"] = {"transport": _httpx_module().AsyncHTTPTransport()}
    options = types.HttpOptions(base_url=srv.root_url, headers={"X-Fault": fault}, timeout=10_000,
                                retry_options=retry, **extra)
    if vertex == "express":
        return genai.Client(vertexai=True, api_key="test-key", http_options=options)
    if vertex == "project":
        from google.oauth2.credentials import Credentials

        return genai.Client(vertexai=True, project="proj", location="us-central1",
                            credentials=Credentials(token="test-token"), http_options=options)
    return genai.Client(api_key="test-key", http_options=options)


@pytest.fixture
def make_client():
    """Builds clients (see :func:`_client`) and keeps them alive until the test ends:
    a dropped ``genai.Client`` closes its HTTP client, even under a running stream."""
    made: List[Any] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        made.append(_client(*args, **kwargs))
        return made[-1]

    yield build
    for client in made:
        client.close()


def chain(exc: Optional[BaseException]) -> List[str]:
    names = []
    while exc is not None and len(names) < 10:
        names.append(f"{type(exc).__module__}.{type(exc).__name__}")
        exc = exc.__cause__ or exc.__context__
    return names


def collect(stream: Any) -> Tuple[List[Any], Optional[BaseException]]:
    chunks: List[Any] = []
    try:
        for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return chunks, exc
    return chunks, None


async def acollect(make_stream: Any) -> Tuple[List[Any], Optional[BaseException]]:
    chunks: List[Any] = []
    try:
        async for chunk in await make_stream():
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


def text_of(chunks: List[Any]) -> str:
    return "".join(part.text or "" for c in chunks if c.candidates and c.candidates[0].content
                   for part in c.candidates[0].content.parts or [])


def finish_of(chunks: List[Any]) -> Optional[str]:
    last = chunks[-1] if chunks else None
    reason = last.candidates[0].finish_reason if last is not None and last.candidates else None
    return reason.value if reason is not None else None


# --------------------------------------------------------------------------- pure: routes and bytes


def _events(fault: str, path: str = f"/v1beta/models/{MODEL}:streamGenerateContent") -> GeminiEvents:
    st = resolve_settings(Fault.parse(fault), CHUNKS, 0.0)
    info = gemini_request_info(path, {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}, CHUNKS)
    return GeminiEvents(info, _Ids("ab" * 16, 1_700_000_000), st, answer_for(PROMPT, CHUNKS))


@pytest.mark.parametrize(
    "path, vertex",
    [
        (f"/v1beta/models/{MODEL}:streamGenerateContent", False),
        (f"/v1/models/{MODEL}:streamGenerateContent", False),
        (f"/v1beta1/publishers/google/models/{MODEL}:streamGenerateContent", True),
        (f"/v1beta1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:streamGenerateContent", True),
        (f"/v1beta/models/{MODEL}:generateContent", False),
    ],
)
def test_gemini_paths_route_to_the_gemini_api(path: str, vertex: bool) -> None:
    assert ROUTES.match(path) is GEMINI
    events = _events("none", path)
    assert events.vertex is vertex
    assert events.info.model == MODEL
    assert events.info.stream is path.endswith(":streamGenerateContent")


@pytest.mark.parametrize("path", ["/v1beta/models/m:countTokens", "/v1beta/models/:streamGenerateContent", "/v2/x"])
def test_other_paths_are_not_routed(path: str) -> None:
    assert ROUTES.match(path) is None


def test_events_are_crlf_separated_json_without_done() -> None:
    events = _events("none")
    wire = b"".join(events.step(i)[0] for i in range(events.n_steps)) + b"".join(events.finish("stop"))
    frames = wire.split(b"\r\n\r\n")
    assert frames[-1] == b"" and len(frames) == CHUNKS + 2
    payloads = [json.loads(f[len(b"data: "):]) for f in frames[:-1]]
    assert all(f.startswith(b'data: {"candidates": [') for f in frames[:-1])
    assert b"[DONE]" not in wire
    assert [p["candidates"][0].get("finishReason") for p in payloads] == [None] * CHUNKS + ["STOP"]
    assert {p["responseId"] for p in payloads} == {events.response_id}
    assert [p["usageMetadata"]["candidatesTokenCount"] for p in payloads] == [1, 2, 3, 4, 4]


def test_vertex_chunks_carry_create_time_and_traffic_type() -> None:
    path = f"/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}:streamGenerateContent"
    payload = json.loads(_events("none", path).step(0)[0][len(b"data: "):])
    assert payload["createTime"] == "2023-11-14T22:13:20.000000Z"
    assert payload["usageMetadata"]["trafficType"] == "ON_DEMAND"


# --------------------------------------------------------------------------- the real client, sync

# fault -> (chunks the app gets, text, final finish reason on the last chunk)
CLEAN = {
    "none": (CHUNKS + 1, "".join(ANSWER), "STOP"),
    "length": (CHUNKS + 1, "".join(ANSWER), "MAX_TOKENS"),
    "content_filter": (CHUNKS + 1, "".join(ANSWER), "SAFETY"),
    "missing_terminator;after=2": (2, "".join(ANSWER[:2]), None),
    "stall;after=1;seconds=0.3": (CHUNKS + 1, "".join(ANSWER), "STOP"),
    "hang;seconds=0.3": (CHUNKS + 1, "".join(ANSWER), "STOP"),
}


@pytest.mark.parametrize("fault", sorted(CLEAN))
def test_sync_stream_ends_as_the_api_would(make_client: Any, srv: FaultServer, fault: str) -> None:
    n, text, finish = CLEAN[fault]
    chunks, exc = collect(make_client(srv, fault).models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert exc is None
    assert len(chunks) == n
    assert text_of(chunks) == text
    assert finish_of(chunks) == finish
    assert srv.requests[-1].path == f"/v{'1' if MAJOR >= 3 else '1beta'}/models/{MODEL}:streamGenerateContent"


def test_usage_metadata_is_the_running_total(make_client: Any, srv: FaultServer) -> None:
    chunks, _ = collect(make_client(srv).models.generate_content_stream(model=MODEL, contents=PROMPT))
    usage = [c.usage_metadata for c in chunks]
    assert [u.candidates_token_count for u in usage] == [1, 2, 3, 4, 4]
    assert {u.prompt_token_count for u in usage} == {2}
    assert usage[-1].thoughts_token_count == 4 and usage[-1].total_token_count == 2 + 4 + 4
    assert {c.model_version for c in chunks} == {MODEL} and len({c.response_id for c in chunks}) == 1


def test_content_filter_ends_with_a_blocked_candidate(make_client: Any, srv: FaultServer) -> None:
    chunks, _ = collect(make_client(srv, "content_filter").models.generate_content_stream(model=MODEL, contents=PROMPT))
    last = chunks[-1].candidates[0]
    assert last.content is None
    assert any(r.blocked for r in last.safety_ratings)


def test_prompt_blocked_is_one_chunk_of_prompt_feedback(make_client: Any, srv: FaultServer) -> None:
    chunks, exc = collect(make_client(srv, "prompt_blocked").models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert exc is None and len(chunks) == 1
    assert chunks[0].candidates is None
    assert chunks[0].prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert chunks[0].usage_metadata.prompt_token_count == 2


def test_tool_calls_stream_one_function_call(make_client: Any, srv: FaultServer) -> None:
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="search_docs", description="d")])
    config = types.GenerateContentConfig(tools=[tool])
    chunks, exc = collect(make_client(srv, "tool_calls").models.generate_content_stream(
        model=MODEL, contents=PROMPT, config=config))
    assert exc is None and finish_of(chunks) == "STOP"
    calls = [p.function_call for c in chunks if c.candidates and c.candidates[0].content
             for p in c.candidates[0].content.parts or [] if p.function_call]
    assert [(c.name, c.args) for c in calls] == [("search_docs", {"query": "".join(ANSWER).strip()})]


TRANSPORT = {
    "reset_mid_chunk;after=2": ("ReadError", "ConnectionResetError"),
    "reset_between;after=2": ("ReadError", "ConnectionResetError"),
    "cut_mid_chunk;after=2": ("RemoteProtocolError", "RemoteProtocolError"),
    "idle_cut;after=2;seconds=0.2": ("RemoteProtocolError", "RemoteProtocolError"),
}


@pytest.mark.parametrize("fault", sorted(TRANSPORT))
def test_sync_transport_faults_raise_the_httpx_errors_after_the_chunks_before(make_client: Any, srv: FaultServer, fault: str) -> None:
    top, innermost = TRANSPORT[fault]
    chunks, exc = collect(make_client(srv, fault).models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert text_of(chunks) == "".join(ANSWER[:2])
    names = chain(exc)
    assert names[0].endswith("." + top) and names[0].split(".")[0] in ("httpx", "httpx2")
    assert names[-1].endswith("." + innermost)


def test_error_payload_mid_stream_raises_server_error(make_client: Any, srv: FaultServer) -> None:
    chunks, exc = collect(make_client(srv, "error_event;after=2").models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert text_of(chunks) == "".join(ANSWER[:2])
    assert isinstance(exc, errors.ServerError)
    assert (exc.code, exc.status) == (500, "INTERNAL")


@pytest.mark.parametrize("fault, cls, status", [
    ("http_429", errors.ClientError, "RESOURCE_EXHAUSTED"),
    ("http_500", errors.ServerError, "INTERNAL"),
    ("http_503", errors.ServerError, "UNAVAILABLE"),
    ("http_502", errors.ServerError, "Bad Gateway"),
    ("http_504", errors.ServerError, "Gateway Timeout"),
])
def test_http_errors_raise_at_the_first_next(make_client: Any, srv: FaultServer, fault: str, cls: type, status: str) -> None:
    stream = make_client(srv, fault).models.generate_content_stream(model=MODEL, contents=PROMPT)
    assert srv.requests == []  # a generator: nothing is sent until the app iterates
    chunks, exc = collect(stream)
    assert chunks == [] and type(exc) is cls
    assert exc.code == int(fault[-3:]) and exc.status == status


def test_sdk_retry_options_resend_after_a_retryable_status(make_client: Any, srv: FaultServer) -> None:
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0.0)
    client = make_client(srv, "http_503;first=2", retry=retry)
    chunks, exc = collect(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert exc is None and finish_of(chunks) == "STOP"
    assert [str(r.fault) for r in srv.requests] == ["http_503;first=2", "http_503;first=2", "none"]


def test_chat_send_message_stream_sync(make_client: Any, srv: FaultServer) -> None:
    chat = make_client(srv, "length").chats.create(model=MODEL)
    chunks, exc = collect(chat.send_message_stream(PROMPT))
    assert exc is None and finish_of(chunks) == "MAX_TOKENS"
    chunks, exc = collect(chat.send_message_stream("again"))
    assert exc is None
    # the second turn sends the history: the user turn, the model's chunks (one content each), the new user turn
    roles = [c["role"] for c in srv.requests[-1].body["contents"]]
    assert roles[0] == roles[-1] == "user" and set(roles[1:-1]) == {"model"}


@pytest.mark.parametrize("vertex, path", [
    ("express", f"/v1beta1/publishers/google/models/{MODEL}:streamGenerateContent"),
    ("project", f"/v1beta1/projects/proj/locations/us-central1/publishers/google/models/{MODEL}:streamGenerateContent"),
])
def test_vertex_clients_reach_the_loopback_server_without_real_credentials(make_client: Any, srv: FaultServer, vertex: str, path: str) -> None:
    chunks, exc = collect(make_client(srv, vertex=vertex).models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert exc is None and finish_of(chunks) == "STOP"
    assert srv.requests[-1].path == path
    assert chunks[-1].create_time is not None


# --------------------------------------------------------------------------- the real client, async

ASYNC_TRANSPORTS = ["httpx"] + (["default"] if HAS_AIOHTTP else [])


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
@pytest.mark.parametrize("fault", ["none", "content_filter", "missing_terminator;after=2"])
async def test_async_stream_ends_as_the_api_would(make_client: Any, srv: FaultServer, transport: str, fault: str) -> None:
    n, text, finish = CLEAN[fault]
    client = make_client(srv, fault, async_transport=transport)
    chunks, exc = await acollect(lambda: client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert exc is None
    assert (len(chunks), text_of(chunks), finish_of(chunks)) == (n, text, finish)


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
@pytest.mark.parametrize("fault", sorted(TRANSPORT) + ["error_event;after=2"])
async def test_async_faults_raise_after_the_chunks_before(make_client: Any, srv: FaultServer, transport: str, fault: str) -> None:
    client = make_client(srv, fault, async_transport=transport)
    chunks, exc = await acollect(lambda: client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert text_of(chunks) == "".join(ANSWER[:2])
    names = chain(exc)
    if fault.startswith("error_event"):
        assert isinstance(exc, errors.ServerError) and exc.code == 500
    elif transport == "default":  # aiohttp
        assert names[:2] == ["aiohttp.client_exceptions.ClientPayloadError", "aiohttp.http_exceptions.TransferEncodingError"]
        assert ("ConnectionResetError" in str(exc)) is fault.startswith("reset")
    else:
        assert names[0].endswith("." + TRANSPORT[fault][0]) and names[-1].endswith("." + TRANSPORT[fault][1])


@pytest.mark.parametrize("transport", ASYNC_TRANSPORTS)
async def test_async_http_error_raises_at_the_first_anext(make_client: Any, srv: FaultServer, transport: str) -> None:
    client = make_client(srv, "http_429", async_transport=transport)
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
    assert srv.requests == []  # awaiting returns an async generator; the request waits for the first chunk
    with pytest.raises(errors.ClientError) as info:
        await stream.__anext__()
    assert info.value.code == 429


async def test_async_chat_send_message_stream(make_client: Any, srv: FaultServer) -> None:
    chat = make_client(srv, "length").aio.chats.create(model=MODEL)
    chunks, exc = await acollect(lambda: chat.send_message_stream(PROMPT))
    assert exc is None and finish_of(chunks) == "MAX_TOKENS" and text_of(chunks) == "".join(ANSWER)
