"""The fault server's Anthropic ``/v1/messages`` against the REAL ``anthropic`` client, uninstrumented.

Each fault must give the SDK what the real API (or a broken network) would:
the final message, its ``stop_reason`` and usage; the ``error`` event raised
as the SDK raises it (a bare ``APIStatusError`` with ``status_code=200``, which
its retries never cover); HTTP 529 raised as ``OverloadedError`` after the
SDK's own retries. Runs on every installed anthropic major (1.x and 2.x).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Optional

import pytest

anthropic = pytest.importorskip("anthropic")

from llm_stream_otel.demo.fault_plan import answer_for  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402

CHUNKS = 6
PROMPT = "hello claude"
MSGS = [{"role": "user", "content": PROMPT}]
ANSWER = "".join(answer_for(PROMPT, CHUNKS))
MODEL = "claude-test"


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
    with anthropic.Anthropic(base_url=srv.origin, api_key="test", max_retries=0, timeout=5.0) as c:
        yield c


def chain(exc: Optional[BaseException]) -> List[str]:
    names = []
    while exc is not None:
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names


def transport_error(exc: BaseException, leaf: str) -> None:
    """Both majors let the raw httpx2 error out of a started stream (as openai 1.x/2.x do with httpx)."""
    assert isinstance(exc, anthropic.APIConnectionError) or type(exc).__module__.startswith("httpx"), chain(exc)
    assert leaf in chain(exc), chain(exc)


def raw_events(client: Any, fault: str, **kw: Any) -> List[Any]:
    stream = client.messages.create(model=MODEL, max_tokens=100, messages=kw.pop("messages", MSGS), stream=True,
                                    extra_headers={"X-Fault": fault}, **kw)
    return list(stream)


def final_message(client: Any, fault: str, **kw: Any) -> Any:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=kw.pop("messages", MSGS),
                                extra_headers={"X-Fault": fault}, **kw) as stream:
        return stream.get_final_message()


def text_of(events: List[Any]) -> str:
    return "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")


def test_a_clean_stream_has_the_real_event_sequence(client: Any) -> None:
    events = raw_events(client, "none")
    kinds = [e.type for e in events]
    # `ping` is on the wire (after content_block_start) but the SDK drops it.
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * CHUNKS + [
        "content_block_stop", "message_delta", "message_stop"]
    assert text_of(events) == ANSWER
    start, delta = events[0].message, events[-2]
    assert start.id.startswith("msg_") and start.model == MODEL and start.usage.input_tokens == 2
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == CHUNKS


def test_message_stream_helper_accumulates_the_final_message(client: Any) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS,
                                extra_headers={"X-Fault": "none;cache_read=7;cache_creation=3"}) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
        assert stream.request_id and stream.request_id.startswith("req_")
    assert "".join(texts) == ANSWER == message.content[0].text
    assert message.stop_reason == "end_turn"
    usage = message.usage
    # message_delta repeats the cumulative input usage; the SDK replaces, never adds.
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens,
            usage.output_tokens) == (2, 7, 3, CHUNKS)


@pytest.mark.parametrize("fault,stop_reason", [("length", "max_tokens"), ("content_filter", "refusal"),
                                               ("tool_calls", "tool_use")])
def test_stop_reasons(client: Any, fault: str, stop_reason: str) -> None:
    message = final_message(client, fault, tools=[{"name": "search", "input_schema": {"type": "object"}}])
    assert message.stop_reason == stop_reason
    if fault == "tool_calls":
        block = message.content[0]
        assert block.type == "tool_use" and block.name == "search" and block.input == {"query": ANSWER.strip()}
    else:
        assert message.content[0].text == ANSWER


def test_tool_input_arrives_as_input_json_deltas(client: Any) -> None:
    events = raw_events(client, "tool_calls")
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert deltas and {d.type for d in deltas} == {"input_json_delta"}
    assert events[1].content_block.type == "tool_use"


def test_error_event_raises_status_error_200_and_is_not_retried(srv: FaultServer) -> None:
    with anthropic.Anthropic(base_url=srv.origin, api_key="test", max_retries=2, timeout=5.0) as client:
        got: List[Any] = []
        with pytest.raises(anthropic.APIStatusError) as info:
            with client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS,
                                        extra_headers={"X-Fault": "error_event;after=2"}) as stream:
                got.extend(stream.text_stream)
    exc = info.value
    assert type(exc) is anthropic.APIStatusError and exc.status_code == 200
    assert exc.body["error"]["type"] == "overloaded_error" and exc.body["type"] == "error"
    assert "".join(got) == "".join(answer_for(PROMPT, 2))
    assert len(srv.requests) == 1  # the SDK's retries never cover a stream that already started


def test_error_event_type_is_a_parameter(client: Any) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        raw_events(client, "error_event;type=api_error")
    assert info.value.status_code == 200 and info.value.body["error"] == {"type": "api_error",
                                                                          "message": "Internal server error"}


def test_overloaded_529_raises_after_the_sdk_retries(srv: FaultServer) -> None:
    with anthropic.Anthropic(base_url=srv.origin, api_key="test", max_retries=2, timeout=5.0) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            raw_events(client, "overloaded")
    assert type(info.value).__name__ == "OverloadedError" and info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert [r.headers.get("x-stainless-retry-count") for r in srv.requests] == ["0", "1", "2"]


@pytest.mark.parametrize("fault,status,error_type", [("http_429", 429, "rate_limit_error"),
                                                      ("http_500", 500, "api_error"), ("http_503", 503, "api_error")])
def test_http_errors_use_the_anthropic_envelope(client: Any, fault: str, status: int, error_type: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        raw_events(client, fault)
    assert info.value.status_code == status and info.value.body["error"]["type"] == error_type


@pytest.mark.parametrize("fault,status", [("http_502", 502), ("http_504", 504)])
def test_gateway_pages(client: Any, fault: str, status: int) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        raw_events(client, fault)
    assert info.value.status_code == status


def test_overloaded_only_applies_to_messages(srv: FaultServer) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(srv.base_url + "/chat/completions", data=b'{"messages": []}',
                                 headers={"X-Fault": "overloaded", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400


@pytest.mark.parametrize("fault", ["reset_mid_chunk", "reset_between"])
def test_resets(client: Any, fault: str) -> None:
    with pytest.raises(Exception) as info:
        raw_events(client, fault)
    transport_error(info.value, "ConnectionResetError")


@pytest.mark.parametrize("fault", ["cut_mid_chunk", "idle_cut;seconds=0.05"])
def test_fin_inside_the_body_is_an_incomplete_chunked_read(client: Any, fault: str) -> None:
    with pytest.raises(Exception) as info:
        raw_events(client, fault)
    transport_error(info.value, "RemoteProtocolError")


def test_missing_terminator_ends_silently_without_message_stop(client: Any) -> None:
    events = raw_events(client, "missing_terminator;after=3")
    assert [e.type for e in events][-1] == "content_block_delta" and text_of(events) == "".join(
        answer_for(PROMPT, 3))
    message = final_message(client, "missing_terminator;after=3")
    assert message.stop_reason is None  # the helper returns a partial message, no error


@pytest.mark.parametrize("fault", ["stall;after=1;seconds=2", "hang;seconds=2"])
def test_stall_and_hang_past_the_read_timeout(srv: FaultServer, fault: str) -> None:
    with anthropic.Anthropic(base_url=srv.origin, api_key="test", max_retries=0, timeout=0.3) as client:
        with pytest.raises(Exception) as info:
            raw_events(client, fault)
    transport_error(info.value, "ReadTimeout")


def test_first_delay_comes_after_message_start(client: Any) -> None:
    stamps = []
    stream = client.messages.create(model=MODEL, max_tokens=100, messages=MSGS, stream=True,
                                    extra_headers={"X-Fault": "none;first_delay=0.3"})
    for event in stream:
        stamps.append((event.type, time.monotonic()))
    first_delta = next(t for kind, t in stamps if kind == "content_block_delta")
    assert stamps[0][0] == "message_start" and first_delta - stamps[0][1] >= 0.25


def test_first_k_cuts_then_serves(srv: FaultServer, client: Any) -> None:
    with pytest.raises(Exception) as info:
        raw_events(client, "reset_mid_chunk;first=1")
    transport_error(info.value, "ConnectionResetError")
    assert text_of(raw_events(client, "reset_mid_chunk;first=1")) == ANSWER


def test_prefill_continuation_serves_only_the_rest(client: Any) -> None:
    partial = ANSWER[:11].rstrip()
    messages = MSGS + [{"role": "assistant", "content": partial}]
    assert partial + text_of(raw_events(client, "none", messages=messages)) == ANSWER


def test_prefill_with_trailing_whitespace_is_refused_like_the_real_api(client: Any) -> None:
    messages = MSGS + [{"role": "assistant", "content": "".join(answer_for(PROMPT, 2))}]
    with pytest.raises(anthropic.BadRequestError) as info:
        raw_events(client, "none", messages=messages)
    assert "trailing whitespace" in info.value.body["error"]["message"]


def test_non_streaming(client: Any) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=MSGS, extra_headers={"X-Fault": "length"})
    assert message.content[0].text == ANSWER and message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == CHUNKS


def test_beta_messages_stream(client: Any) -> None:
    with client.beta.messages.stream(model=MODEL, max_tokens=100, messages=MSGS) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == ANSWER and message.stop_reason == "end_turn"


def test_async_client(srv: FaultServer) -> None:
    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=srv.origin, api_key="test", max_retries=0, timeout=5.0) as client:
            stream = await client.messages.create(model=MODEL, max_tokens=100, messages=MSGS, stream=True)
            events = [e async for e in stream]
            assert text_of(events) == ANSWER and events[-1].type == "message_stop"
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS,
                                              extra_headers={"X-Fault": "length"}) as mstream:
                message = await mstream.get_final_message()
            assert message.stop_reason == "max_tokens"
            with pytest.raises(anthropic.APIStatusError) as info:
                async with client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS,
                                                  extra_headers={"X-Fault": "error_event"}) as mstream:
                    await mstream.until_done()
            assert info.value.status_code == 200
            with pytest.raises(Exception) as cut:
                stream = await client.messages.create(model=MODEL, max_tokens=100, messages=MSGS, stream=True,
                                                      extra_headers={"X-Fault": "reset_mid_chunk"})
                async for _ in stream:
                    pass
            transport_error(cut.value, "ConnectionResetError")

    asyncio.run(main())
