"""The fault server's scripted mode (``X-Script``), which the property tests rely on."""

from __future__ import annotations

import base64
import json
import zlib

import openai
import pytest

from hardening_scripts import Scenario, consume
from llm_stream_otel.demo.fault_plan import CutMidEvent, Emit, End, FaultSpecError, Pause, Reset
from tests.support.scripted import decode_script, encode_script, script_plan, sse_event

ENV = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "m"}
EVENTS = [json.dumps({**ENV, "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]}) for c in "ab"]
EVENTS += [json.dumps({**ENV, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), "[DONE]"]


def test_round_trip_and_plans():
    script = decode_script(encode_script(EVENTS, "stall", 2, seconds=0.5, delay=0.01))
    assert script.events == tuple(EVENTS) and script.fault == "stall" and script.at == 2
    actions = script_plan(script).actions
    assert [type(a) for a in actions] == [Emit, Pause, Emit, Pause, Pause, Emit, Pause, Emit, End]
    assert actions[3] == Pause(0.5) and actions[4] == Pause(0.01)
    assert script_plan(decode_script(encode_script(EVENTS, "reset_between", 1))).actions[-1] == Reset()
    cut = script_plan(decode_script(encode_script(EVENTS, "cut_mid_chunk", 4))).actions[-1]
    assert isinstance(cut, CutMidEvent) and not cut.rst  # past the end: a filler event is cut
    assert sse_event(("thread.run", "a\nb")) == b"event: thread.run\ndata: a\ndata: b\n\n"
    assert script_plan(decode_script(encode_script([], "http_429"))).plain.status == 429


@pytest.mark.parametrize("header", ["%%%", base64.urlsafe_b64encode(b"not zlib").decode(),
                                    base64.urlsafe_b64encode(zlib.compress(b'{"events": 3}')).decode(),
                                    base64.urlsafe_b64encode(zlib.compress(b'{"events": [], "fault": "x"}')).decode(),
                                    base64.urlsafe_b64encode(zlib.compress(b'{"events": [], "at": -1}')).decode()])
def test_malformed_scripts_are_rejected(header, client):
    with pytest.raises(FaultSpecError):
        decode_script(header)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True,
                                       extra_headers={"X-Script": header})
    assert info.value.code == "invalid_script"


@pytest.mark.parametrize(
    "fault, at, n_chunks, error",
    [
        ("none", None, 3, None),
        ("missing_terminator", 2, 2, None),
        ("reset_between", 1, 1, "reset"),
        ("reset_mid_chunk", 2, 2, "reset"),
        ("cut_mid_chunk", 0, 0, "cut"),
        ("error_event", 1, 1, openai.APIError),
        ("stall", 1, 3, None),
        ("http_500", None, 0, openai.InternalServerError),
    ],
)
def test_scripts_against_the_real_client(client, fault, at, n_chunks, error):
    chunks, exc = consume(client, Scenario("chat", list(EVENTS), fault=fault, at=at, seconds=0.05))
    assert len(chunks) == n_chunks
    assert [c.choices[0].delta.content for c in chunks] == (["a", "b", None][:n_chunks])
    if error is None:
        assert exc is None
    elif isinstance(error, str):
        text = repr(exc) + repr(exc.__cause__) + repr(getattr(exc.__cause__, "__cause__", None))
        assert ("Reset" in text or "reset" in text) if error == "reset" else ("incomplete" in text or "peer closed" in text)
    else:
        assert isinstance(exc, error)


def test_huge_scripts_fit_in_the_header(client):
    big = json.dumps({**ENV, "choices": [{"index": 0, "delta": {"content": "x" * 2_000_000}, "finish_reason": "stop"}]})
    chunks, exc = consume(client, Scenario("chat", [big, "[DONE]"]))
    assert exc is None and len(chunks[0].choices[0].delta.content) == 2_000_000
