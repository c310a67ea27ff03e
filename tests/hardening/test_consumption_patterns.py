"""The SDK's stream helpers under faults, and span-ends-once edge cases (issue 8).

``tests/test_lifecycle.py`` covers the helpers on clean streams; here every
helper entry point (``get_final_completion()`` / ``get_final_response()``,
``until_done()``, iteration, leaving the block without reading) meets every
fault, sync and async, and the app must get exactly what it gets without
instrumentation (same final object, same exception) while one span ends
with the fault's outcome.
"""

from __future__ import annotations

import gc
import json
import re
from typing import Any, Callable, Optional, Tuple

import openai
import pytest

from llm_stream_otel import semconv as t
from streaming import request_kwargs
from test_transparency_property import Instrumented

# fault -> (outcome, reason) when the helper reads to the end
FAULTS = {
    "none": (t.OUTCOME_COMPLETED, None),
    "length": (t.OUTCOME_LENGTH, None),
    "reset_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_CONNECTION_RESET),
    "cut_mid_chunk;after=2": (t.OUTCOME_TRUNCATED, t.REASON_INCOMPLETE_READ),
    "missing_terminator;after=2": (t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR),
    "error_event;after=2": (t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT),
}
HOW = ("final", "until_done", "iterate", "exit_unread")


def _helper_kwargs(endpoint: str, fault: str) -> dict:
    kwargs = request_kwargs(endpoint, fault, prompt=f"helper {endpoint} {fault}")
    kwargs.pop("stream")
    return kwargs


_IDS = re.compile(r"[0-9a-f]{32}")
_TIMES = re.compile(r'"(created|created_at|completed_at)": [0-9.]+')


def _normal(obj: Any) -> Any:
    """Type and JSON of an SDK object, with the server's random ids and timestamps blanked."""
    text = json.dumps(obj.model_dump(mode="json", warnings=False), sort_keys=True)
    return type(obj), _TIMES.sub(r'"\1": 0', _IDS.sub("<id>", text))


def _view(result: Any) -> Any:
    if result is None:
        return None
    if isinstance(result, list):
        return [_normal(event) for event in result]
    return _normal(result)


def _sync_helper(client: openai.OpenAI, endpoint: str, fault: str, how: str) -> Tuple[Any, Optional[BaseException]]:
    resource = client.chat.completions if endpoint == "chat" else client.responses
    final: Callable[[Any], Any] = (lambda s: s.get_final_completion()) if endpoint == "chat" else (
        lambda s: s.get_final_response())
    try:
        with resource.stream(**_helper_kwargs(endpoint, fault)) as stream:
            if how == "final":
                return _view(final(stream)), None
            if how == "until_done":
                stream.until_done()
                return None, None
            if how == "iterate":
                return _view(list(stream)), None
            return None, None
    except Exception as exc:  # noqa: BLE001
        return None, exc


async def _async_helper(client: openai.AsyncOpenAI, endpoint: str, fault: str, how: str) -> Tuple[Any, Optional[BaseException]]:
    resource = client.chat.completions if endpoint == "chat" else client.responses
    try:
        async with resource.stream(**_helper_kwargs(endpoint, fault)) as stream:
            if how == "final":
                result = await (stream.get_final_completion() if endpoint == "chat" else stream.get_final_response())
                return _view(result), None
            if how == "until_done":
                await stream.until_done()
                return None, None
            if how == "iterate":
                return _view([e async for e in stream]), None
            return None, None
    except Exception as exc:  # noqa: BLE001
        return None, exc


def _expect(fault: str, how: str) -> Tuple[str, Optional[str]]:
    return (t.OUTCOME_ABANDONED, None) if how == "exit_unread" else FAULTS[fault]


def _check(telemetry: Any, plain: Any, got: Any, fault: str, how: str) -> None:
    assert got[0] == plain[0]
    assert type(got[1]) is type(plain[1]) and str(got[1]) == str(plain[1])
    spans = telemetry.stream_spans()
    assert len(spans) == 1
    attrs = spans[0].attributes
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == _expect(fault, how), (attrs, got[1])
    assert telemetry.total(t.METRIC_OUTCOMES) == 1


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_sync_helpers_under_faults(client, endpoint, fault, how):
    plain = _sync_helper(client, endpoint, fault, how)
    with Instrumented() as telemetry:
        got = _sync_helper(client, endpoint, fault, how)
    _check(telemetry, plain, got, fault, how)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("endpoint", ["chat", "responses"])
async def test_async_helpers_under_faults(aclient, endpoint, fault, how):
    plain = await _async_helper(aclient, endpoint, fault, how)
    with Instrumented() as telemetry:
        got = await _async_helper(aclient, endpoint, fault, how)
    _check(telemetry, plain, got, fault, how)


def test_every_ending_after_an_ending_changes_nothing(instrumented, client):
    """Read to the end, then close, leave ``with``, close again and drop: one span, one point."""
    with client.chat.completions.create(**request_kwargs("chat", "reset_between;after=2")) as stream:
        with pytest.raises(Exception):
            for _ in stream:
                pass
        stream.close()
    stream.close()
    del stream
    gc.collect()
    spans = instrumented.stream_spans()
    assert len(spans) == 1 and spans[0].attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert instrumented.total(t.METRIC_OUTCOMES) == 1


def test_stream_in_a_reference_cycle_ends_once_via_gc(instrumented, client):
    """A stream the app keeps in a cycle is only freed by the cyclic GC: it still ends, once."""
    holder: dict = {}
    holder["self"] = holder
    holder["stream"] = client.chat.completions.create(**request_kwargs("chat", "none;chunks=10"))
    next(holder["stream"])
    del holder
    assert instrumented.stream_spans() == []  # not collected yet: still open
    gc.collect()
    spans = instrumented.stream_spans()
    assert len(spans) == 1 and spans[0].attributes[t.OUTCOME] == t.OUTCOME_ABANDONED
    gc.collect()
    assert len(instrumented.stream_spans()) == 1


async def test_async_stream_never_iterated_dropped(instrumented, aclient):
    stream = await aclient.chat.completions.create(**request_kwargs("chat", "none"))
    assert stream.response.status_code == 200
    del stream
    gc.collect()
    spans = instrumented.stream_spans()
    assert len(spans) == 1 and spans[0].attributes[t.OUTCOME] == t.OUTCOME_ABANDONED
    assert spans[0].attributes[t.CHUNKS] == 0
