"""Chunk shapes some OpenAI-compatible servers send that once fooled our readers:
a choice without ``index``, and a repeated finish for one choice of several.

The app is never affected (checked here too); our outcome must be right as well.
"""

from __future__ import annotations

import json
from typing import Any, List

import pytest

from hardening_scripts import Scenario, consume
from llm_stream_otel import semconv as t
from test_transparency_property import Instrumented

ENV = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-script"}


def _chunk(choices: List[Any]) -> str:
    return json.dumps({**ENV, "choices": choices})


def _run(client: Any, events: List[str], n: int = 1) -> Any:
    plain = consume(client, Scenario("chat", events, n=n))
    with Instrumented() as telemetry:
        got = consume(client, Scenario("chat", events, n=n))
    assert got[0] == plain[0] and got[1] is None and plain[1] is None  # the app is unaffected
    return telemetry


def test_choices_without_index(client, our_logs):
    events = [_chunk([{"delta": {"content": "hi"}, "finish_reason": None}]),
              _chunk([{"delta": {}, "finish_reason": "stop"}]), "[DONE]"]
    telemetry = _run(client, events)
    assert our_logs.internal_errors() == []
    assert telemetry.span().attributes[t.OUTCOME] == t.OUTCOME_COMPLETED


def test_repeated_finish_for_one_choice_does_not_complete_the_other(client, our_logs):
    events = [_chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
              _chunk([{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]),
              _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
              _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])]
    telemetry = _run(client, events, n=2)
    assert our_logs.internal_errors() == []
    attrs = telemetry.span().attributes
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR)
    # With [DONE] (issue 12) the stream is complete, and choice 1's finish reason is known to be missing.
    telemetry = _run(client, events + ["[DONE]"], n=2)
    attrs = telemetry.span().attributes
    assert attrs[t.OUTCOME] == t.OUTCOME_COMPLETED and attrs[t.FINISH_REASON_MISSING] is True


@pytest.mark.usefixtures("lenient_mode")  # a reader bug (chunks.py), survived, not raised
def test_non_object_choices_are_survived(client, our_logs):
    """Garbage inside ``choices`` (a string) costs our reading of that chunk, never the app."""
    events = [_chunk(["not a choice"]), _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]), "[DONE]"]
    telemetry = _run(client, events)
    assert len(telemetry.stream_spans()) == 1
    assert telemetry.span().attributes[t.CHUNKS] == 2
