"""The fault server against the REAL openai client (1.x on httpx, 3.x on httpx2).

Each fault must produce the failure it claims on the wire, as seen by the SDK.
Observed exception chains (top first):

* reset_* : 3.x APIConnectionError <- httpx2.ReadError <- httpcore2.ReadError
  [<- anyio.BrokenResourceError when async] <- ConnectionResetError;
  1.x raises the raw httpx.ReadError <- httpcore.ReadError [<- anyio...] <- ConnectionResetError.
* cut_mid_chunk: same wrapping, but RemoteProtocolError "(incomplete chunked read)" from h11.
* stall/hang past the client timeout: 3.x APITimeoutError <- httpx2.ReadTimeout ...;
  1.x raw httpx.ReadTimeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, List, Optional

import openai
import pytest

from llm_stream_otel.demo.fault_plan import Fault, FaultSpecError, answer_for, parse_mix
from llm_stream_otel.demo.fault_server import FaultServer

# openai 1.x and 2.x (on httpx) let transport errors out raw once a stream started; 3.x wraps them.
RAW_HTTPX = int(openai.__version__.split(".")[0]) < 3
CHUNKS = 6
MSGS = [{"role": "user", "content": "hello there"}]
ANSWER = answer_for("hello there", CHUNKS)


@pytest.fixture(scope="module")
def server():
    with FaultServer(chunks=CHUNKS) as srv:
        yield srv


@pytest.fixture
def srv(server: FaultServer) -> FaultServer:
    server.reset()
    return server


@pytest.fixture
def client(srv: FaultServer):
    with openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=5.0) as c:
        yield c


def chain(exc: Optional[BaseException]) -> List[str]:
    """``module.Class`` of the exception and its causes (explicit or implicit)."""
    names = []
    while exc is not None:
        names.append(f"{type(exc).__module__}.{type(exc).__qualname__}")
        exc = exc.__cause__ or exc.__context__
    return names


def chat(client: openai.OpenAI, fault: str, collected: List[Any], **kw: Any) -> None:
    stream = client.chat.completions.create(
        model="gpt-test", messages=kw.pop("messages", MSGS), stream=True, extra_headers={"X-Fault": fault}, **kw
    )
    for chunk in stream:
        collected.append(chunk)


def contents(chunks: List[Any]) -> List[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def assert_transport_error(exc: BaseException, leaf: str, low_level: str) -> None:
    """3.x wraps mid-stream transport errors in APIConnectionError, 1.x leaks the httpx error."""
    names = chain(exc)
    if RAW_HTTPX:
        assert names[0] == f"httpx.{low_level}", names
    else:
        assert isinstance(exc, openai.APIConnectionError), names
        assert names[1] == f"httpx2.{low_level}", names
    assert names[-1] == leaf, names


# --------------------------------------------------------------------------- normal streams


def test_none_streams_all_chunks_and_stop(srv: FaultServer, client: openai.OpenAI) -> None:
    got: List[Any] = []
    chat(client, "none", got)
    assert contents(got) == ANSWER
    assert got[0].choices[0].delta.role == "assistant"
    assert got[-1].choices[0].finish_reason == "stop"
    assert got[-1].model == "gpt-test" and got[-1].id.startswith("chatcmpl-")
    assert [r.fault for r in srv.requests] == ["none"]
    assert srv.requests[0].body["messages"] == MSGS and "x-stainless-retry-count" in srv.requests[0].headers


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_finish_reason_faults(client: openai.OpenAI, reason: str) -> None:
    got: List[Any] = []
    chat(client, reason, got)
    assert contents(got) == ANSWER
    assert got[-1].choices[0].finish_reason == reason


def test_tool_calls(client: openai.OpenAI) -> None:
    got: List[Any] = []
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    chat(client, "tool_calls", got, tools=tools)
    calls = [tc for c in got for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "search" and calls[0].id
    assert json.loads("".join(tc.function.arguments for tc in calls))["query"] == "".join(ANSWER).strip()
    assert got[-1].choices[0].finish_reason == "tool_calls"


def test_n_choices_and_include_usage(client: openai.OpenAI) -> None:
    got: List[Any] = []
    chat(client, "none;chunks=3", got, n=2, stream_options={"include_usage": True})
    for idx in (0, 1):
        mine = [c.choices[0] for c in got if c.choices and c.choices[0].index == idx]
        assert "".join(ch.delta.content or "" for ch in mine) == "".join(answer_for("hello there", 3))
        assert mine[-1].finish_reason == "stop"
    assert got[-1].choices == [] and got[-1].usage.completion_tokens == 6
    assert got[-1].usage.total_tokens == got[-1].usage.prompt_tokens + 6


def test_non_streaming_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="m", messages=MSGS, extra_headers={"X-Fault": "length"})
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == "".join(ANSWER) and resp.choices[0].finish_reason == "length"


async def test_async_none_and_reset(srv: FaultServer) -> None:
    async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="test", max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(model="m", messages=MSGS, stream=True)
        texts = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
        assert texts == ANSWER
        got = []
        with pytest.raises(Exception) as info:
            stream = await aclient.chat.completions.create(
                model="m", messages=MSGS, stream=True, extra_headers={"X-Fault": "reset_mid_chunk;after=2"}
            )
            async for chunk in stream:
                got.append(chunk)
    assert contents(got) == ANSWER[:2]
    assert_transport_error(info.value, "builtins.ConnectionResetError", "ReadError")
    assert "anyio.BrokenResourceError" in chain(info.value)


# --------------------------------------------------------------------------- transport faults


@pytest.mark.parametrize("fault", ["reset_mid_chunk;after=3", "reset_between;after=3"])
def test_reset_faults_raise_connection_reset(client: openai.OpenAI, fault: str) -> None:
    got: List[Any] = []
    with pytest.raises(Exception) as info:
        chat(client, fault, got)
    assert contents(got) == ANSWER[:3]
    assert_transport_error(info.value, "builtins.ConnectionResetError", "ReadError")


def test_cut_mid_chunk_is_incomplete_chunked_read(client: openai.OpenAI) -> None:
    got: List[Any] = []
    with pytest.raises(Exception) as info:
        chat(client, "cut_mid_chunk;after=2", got)
    assert contents(got) == ANSWER[:2]
    assert_transport_error(info.value, "h11._util.RemoteProtocolError", "RemoteProtocolError")
    assert "incomplete chunked read" in str(info.value.__cause__ or info.value)


def test_missing_terminator_ends_silently(client: openai.OpenAI) -> None:
    got: List[Any] = []
    chat(client, "missing_terminator;after=4", got)  # no exception
    assert contents(got) == ANSWER[:4]
    assert all(c.choices[0].finish_reason is None for c in got)


def test_error_event_raises_api_error(client: openai.OpenAI) -> None:
    got: List[Any] = []
    with pytest.raises(openai.APIError) as info:
        chat(client, "error_event;after=2", got)
    assert type(info.value) is openai.APIError
    assert contents(got) == ANSWER[:2]
    assert info.value.body["code"] == "stream_interrupted"


def test_stall_delays_then_finishes(client: openai.OpenAI) -> None:
    got: List[Any] = []
    start = time.monotonic()
    chat(client, "stall;after=2;seconds=0.4", got)
    assert time.monotonic() - start >= 0.4
    assert contents(got) == ANSWER and got[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("fault, n_before", [("stall;after=2;seconds=5", 2), ("hang;seconds=5", 0)])
def test_stall_and_hang_trip_read_timeout(srv: FaultServer, fault: str, n_before: int) -> None:
    got: List[Any] = []
    with openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0, timeout=0.3) as c:
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            chat(c, fault, got)
    assert time.monotonic() - start < 2
    assert len(contents(got)) == n_before
    names = chain(info.value)
    assert names[0] == ("httpx.ReadTimeout" if RAW_HTTPX else "openai.APITimeoutError"), names
    assert "builtins.TimeoutError" in names


def test_http_500_is_retried_by_sdk(srv: FaultServer) -> None:
    with openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=2) as c:
        start = time.monotonic()
        with pytest.raises(openai.InternalServerError):
            chat(c, "http_500", [])
    assert time.monotonic() - start < 1.5  # retry-after-ms keeps the backoff short
    assert [r.headers["x-stainless-retry-count"] for r in srv.requests] == ["0", "1", "2"]


@pytest.mark.parametrize("fault, exc", [("http_429", openai.RateLimitError), ("http_503", openai.InternalServerError)])
def test_http_status_faults(client: openai.OpenAI, fault: str, exc: type) -> None:
    with pytest.raises(exc) as info:
        chat(client, fault, [])
    assert info.value.status_code == int(fault[-3:])


def test_first_cuts_once_then_serves(srv: FaultServer, client: openai.OpenAI) -> None:
    fault = "reset_mid_chunk;after=2;first=1"
    with pytest.raises(Exception):
        chat(client, fault, [])
    got: List[Any] = []
    chat(client, fault, got)
    assert contents(got) == ANSWER
    assert [str(r.fault) for r in srv.requests] == [fault, "none"]


def test_continuation_streams_only_the_missing_part(srv: FaultServer, client: openai.OpenAI) -> None:
    fault = "cut_mid_chunk;after=2;first=1"
    got: List[Any] = []
    with pytest.raises(Exception):
        chat(client, fault, got)
    partial = "".join(contents(got))
    rest: List[Any] = []
    messages = MSGS + [{"role": "assistant", "content": partial}, {"role": "user", "content": "continue"}]
    chat(client, fault, rest, messages=messages)
    assert contents(rest) == ANSWER[2:]
    assert srv.requests[-1].fault == "none"  # a continuation counts as another attempt of the same prompt


def test_unknown_fault_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "bogus", [])
    assert "unknown fault" in info.value.message


def test_unknown_path_is_404(srv: FaultServer) -> None:
    req = urllib.request.Request(srv.base_url + "/models", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 404 and "error" in json.loads(info.value.read())


# --------------------------------------------------------------------------- other endpoints


def responses_events(client: openai.OpenAI, fault: str) -> List[Any]:
    stream = client.responses.create(model="gpt-test", input="hello there", stream=True, extra_headers={"X-Fault": fault})
    return list(stream)


def test_responses_none_with_sdk_helper(client: openai.OpenAI) -> None:
    events = responses_events(client, "none")
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types.count("response.output_text.delta") == CHUNKS and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with client.responses.stream(model="gpt-test", input="hello there") as stream:
        final = stream.get_final_response()
    assert final.output_text == "".join(ANSWER) and final.usage.output_tokens == CHUNKS


def test_responses_length_is_incomplete(client: openai.OpenAI) -> None:
    last = responses_events(client, "length")[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_responses_error_event_and_failed(client: openai.OpenAI) -> None:
    events = responses_events(client, "error_event;after=2")  # the SDK yields it, it does not raise
    assert [e.type for e in events][-3:] == ["response.output_text.delta", "response.output_text.delta", "error"]
    assert events[-1].code == "server_error"
    failed = responses_events(client, "response_failed;after=1")[-1]
    assert failed.type == "response.failed" and failed.response.error.code == "server_error"


def test_responses_non_streaming(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="gpt-test", input="hello there")
    assert resp.status == "completed" and resp.output_text == "".join(ANSWER)


def test_legacy_completions(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello there", stream=True)
    chunks = list(stream)
    assert [c.choices[0].text for c in chunks[:-1]] == ANSWER and chunks[-1].choices[0].finish_reason == "stop"
    got = []
    with pytest.raises(Exception) as info:
        for c in client.completions.create(model="m", prompt="hello there", stream=True,
                                           extra_headers={"X-Fault": "reset_between;after=1"}):
            got.append(c)
    assert len(got) == 1
    assert chain(info.value)[-1] == "builtins.ConnectionResetError"


# --------------------------------------------------------------------------- config, mix, pure helpers


def test_default_fault_and_seeded_mix_are_deterministic() -> None:
    def faults(seed: int) -> List[str]:
        mix = parse_mix("http_503=0.5,none=0.5")
        with FaultServer(mix=mix, seed=seed, default_fault="http_500") as s:
            for _ in range(12):
                req = urllib.request.Request(s.base_url + "/chat/completions", method="POST",
                                             data=json.dumps({"model": "m", "messages": MSGS}).encode())
                try:
                    urllib.request.urlopen(req, timeout=5).read()
                except urllib.error.HTTPError as exc:
                    exc.read()
            return [str(r.fault) for r in s.requests]

    first = faults(7)
    assert first == faults(7) and set(first) == {"http_503", "none"}


def test_answer_for_and_specs() -> None:
    assert answer_for("p", 10)[:4] == answer_for("p", 4)
    assert answer_for("p", 4) != answer_for("q", 4) and all(w.endswith(" ") for w in answer_for("p", 4))
    fault = Fault.parse("stall; after=2 ;seconds=1.5")
    assert fault == "stall;after=2;seconds=1.5" and fault.name == "stall" and fault.get("seconds") == "1.5"
    for bad in ("nope", "stall;sconds=1", "stall;after=x"):
        with pytest.raises(FaultSpecError):
            Fault.parse(bad)
    assert parse_mix("stall;seconds=2=0.3,none=0.7") == {"stall;seconds=2": 0.3, "none": 0.7}


def test_cli_runs_until_interrupted() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_stream_otel.demo.fault_server", "--port", "0", "--fault", "length", "--chunks", "2",
         "--chunk-delay", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
        # a background shell starts children with SIGINT ignored; Ctrl-C handling needs the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=base_url, api_key="t", max_retries=0) as c:
            resp = c.chat.completions.create(model="m", messages=MSGS)
        assert resp.choices[0].finish_reason == "length"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()


def test_a_reset_comes_after_everything_written_reached_a_slow_reader(client: openai.OpenAI) -> None:
    """``reset_between`` after a chunk bigger than the socket buffers, read late: the
    client still gets every chunk before the reset. (An abortive close drops what the
    peer has not acknowledged; a fixed grace before it lost the tail for a slow reader:
    the 3.12 flake of test_responses_sync_script under CPU load, issue 19.)"""
    from tests.support.scripted import encode_script

    def chunk(text: str) -> str:
        return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})

    huge = "x" * (1024 * 1024)  # more than the reader's receive window, less than it plus our send buffer
    script = encode_script([chunk("a"), chunk(huge), chunk("b")], "reset_between", 3)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            extra_headers={"X-Script": script})
    time.sleep(0.5)  # a reader busy elsewhere: the server's writes fill the windows and wait
    got: List[str] = []
    # openai 3.x wraps the reset in APIConnectionError; 1.x and 2.x let httpx's ReadError out.
    with pytest.raises(Exception) as raised:
        for c in stream:
            got.append(c.choices[0].delta.content)
    assert type(raised.value).__name__ in ("APIConnectionError", "ReadError"), repr(raised.value)
    assert got == ["a", huge, "b"]
