"""Scripted streams: the client says exactly which SSE payloads to send back.

The fault server normally builds its own answers; property-based tests need
arbitrary chunk shapes instead (missing ``choices``, ``null`` deltas, unknown
fields, huge or non-ASCII text...). A request carrying an ``X-Script`` header
gets a 200 SSE stream made of the script's raw ``data:`` payloads, with one
transport fault applied at a chosen point. Nothing here touches a socket: a
script becomes a list of :mod:`fault_plan` actions (or a plain error reply)
that the server executes like any other plan.

Header value: URL-safe base64 of zlib-compressed JSON (compression keeps huge
but repetitive payloads well under the server's 64 KiB header limit)::

    {"events": ["{\\"choices\\": []}", {"event": "x", "data": "..."}, "[DONE]"],
     "fault": "reset_mid_chunk", "at": 3, "seconds": 1.0,
     "delay": 0.0, "first_delay": 0.0, "error": "{...}"}

Faults (the names of :data:`fault_plan.FAULT_NAMES`), applied once
``events[:at]`` are out (``at`` defaults to every event):

- ``none``: every event, then the chunked body ends cleanly;
- ``missing_terminator``: the body ends cleanly after ``events[:at]``;
- ``reset_between``: TCP RST after ``events[:at]``;
- ``reset_mid_chunk`` / ``cut_mid_chunk``: half of ``events[at]`` (or of a
  filler event when there is none) then RST / FIN;
- ``error_event``: an error object (``error`` or an OpenAI error envelope),
  then a clean end;
- ``stall``: a pause of ``seconds`` before ``events[at]``, then the rest;
- ``http_500`` / ``http_429`` / ``http_503``: that status with an error body,
  no stream at all.

Use :func:`encode_script` to build the header value.

A chat or completions request with ``stream_options.include_usage`` gets
what the real API adds then (:func:`as_asked`): ``"usage": null`` on every
chunk object that has no usage, and a usage-only chunk (``choices: []``)
just before ``[DONE]`` (a fault at ``[DONE]`` cuts before it).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from llm_stream_otel.demo.fault_server import register_planner
from llm_stream_otel.demo.fault_plan import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    Action,
    CutMidEvent,
    Emit,
    End,
    Fault,
    FaultSpecError,
    Pause,
    PlainResponse,
    Plan,
    Reset,
    error_body,
)

__all__ = ["HEADER", "SCRIPT_FAULTS", "Script", "encode_script", "decode_script", "script_plan", "script_fault", "sse_event",
           "as_asked"]

HEADER = "X-Script"
SCRIPT_FAULTS = frozenset(
    {
        "none",
        "missing_terminator",
        "reset_between",
        "reset_mid_chunk",
        "cut_mid_chunk",
        "error_event",
        "stall",
        "http_500",
        "http_429",
        "http_503",
    }
)
_HTTP = {"http_500": 500, "http_429": 429, "http_503": 503}
_DEFAULT_ERROR = json.dumps(
    {"error": {"message": "Scripted stream error.", "type": "server_error", "param": None, "code": "scripted"}}
)
_FILLER = "{}"
_MAX_DECODED = 64 * 1024 * 1024  # a decompressed script larger than this is refused

Event = Union[str, Tuple[Optional[str], str]]


@dataclass(frozen=True)
class Script:
    """Raw SSE payloads plus one fault; see the module docstring."""

    events: Tuple[Event, ...]
    fault: str = "none"
    at: Optional[int] = None
    seconds: float = 1.0
    delay: float = 0.0
    first_delay: float = 0.0
    error: Optional[str] = None

    @property
    def fault_position(self) -> int:
        """How many events go out before the fault (clamped to the script)."""
        return len(self.events) if self.at is None else max(0, min(self.at, len(self.events)))


def sse_event(event: Event) -> bytes:
    """One SSE event: an optional ``event:`` line, then one ``data:`` line per payload line."""
    name, data = (None, event) if isinstance(event, str) else event
    head = f"event: {name}\n" if name else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return (head + body + "\n").encode("utf-8")


def encode_script(
    events: Sequence[Union[str, Mapping[str, Any], Tuple[Optional[str], str]]],
    fault: str = "none",
    at: Optional[int] = None,
    *,
    seconds: float = 1.0,
    delay: float = 0.0,
    first_delay: float = 0.0,
    error: Optional[str] = None,
) -> str:
    """The ``X-Script`` header value for these events and this fault.

    ``events`` items are raw ``data`` strings, ``(event_name, data)`` pairs,
    or mappings (JSON-encoded as the data, for convenience).
    """
    items: List[Any] = []
    for event in events:
        if isinstance(event, tuple):
            items.append({"event": event[0], "data": event[1]})
        elif isinstance(event, str):
            items.append(event)
        else:
            items.append(json.dumps(event, ensure_ascii=False))
    doc = {"events": items, "fault": fault, "at": at, "seconds": seconds, "delay": delay,
           "first_delay": first_delay, "error": error}
    _validate(doc)
    raw = zlib.compress(json.dumps(doc, ensure_ascii=False).encode("utf-8"), 9)
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_script(header: str) -> Script:
    """Parse an ``X-Script`` header value; :class:`FaultSpecError` on anything malformed."""
    try:
        raw = base64.urlsafe_b64decode(header.strip().encode("ascii"))
        inflater = zlib.decompressobj()
        text = inflater.decompress(raw, _MAX_DECODED)
        if inflater.unconsumed_tail:
            raise FaultSpecError("script too large")
        doc = json.loads(text.decode("utf-8"))
    except FaultSpecError:
        raise
    except (ValueError, UnicodeError, binascii.Error, zlib.error) as exc:
        raise FaultSpecError(f"bad X-Script header: {exc}") from None
    _validate(doc)
    events: List[Event] = []
    for item in doc["events"]:
        events.append(item if isinstance(item, str) else (item.get("event"), item["data"]))
    return Script(
        events=tuple(events),
        fault=doc.get("fault") or "none",
        at=doc.get("at"),
        seconds=float(doc.get("seconds", 1.0)),
        delay=float(doc.get("delay") or 0.0),
        first_delay=float(doc.get("first_delay") or 0.0),
        error=doc.get("error"),
    )


def _validate(doc: Any) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise FaultSpecError("script must be an object with an 'events' list")
    for item in doc["events"]:
        ok = isinstance(item, str) or (
            isinstance(item, dict)
            and isinstance(item.get("data"), str)
            and (item.get("event") is None or isinstance(item.get("event"), str))
        )
        if not ok:
            raise FaultSpecError(f"bad script event {item!r}: a data string or {{'event', 'data'}}")
    fault = doc.get("fault") or "none"
    if fault not in SCRIPT_FAULTS:
        raise FaultSpecError(f"unknown script fault {fault!r}; known: {', '.join(sorted(SCRIPT_FAULTS))}")
    at = doc.get("at")
    if at is not None and (not isinstance(at, int) or isinstance(at, bool) or at < 0):
        raise FaultSpecError("script 'at' must be a non-negative integer")
    for key in ("seconds", "delay", "first_delay"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise FaultSpecError(f"script {key!r} must be a non-negative number")
    if doc.get("error") is not None and not isinstance(doc["error"], str):
        raise FaultSpecError("script 'error' must be a string (the error event's data)")


def script_plan(script: Script) -> Plan:
    """What the socket layer must do for this script."""
    if script.fault in _HTTP:
        status = _HTTP[script.fault]
        return Plan(plain=PlainResponse(status, error_body(f"Scripted HTTP {status}.", "server_error", None),
                                        (("retry-after-ms", "1"),)))
    events = [sse_event(e) for e in script.events]
    at = script.fault_position
    actions: List[Action] = []
    if script.first_delay:
        actions.append(Pause(script.first_delay))

    sent = [0]

    def emit(batch: Sequence[bytes]) -> None:
        for data in batch:
            if script.delay and sent[0]:
                actions.append(Pause(script.delay))
            actions.append(Emit(data))
            sent[0] += 1

    emit(events[:at])
    fault = script.fault
    if fault in ("none", "stall"):
        if fault == "stall":
            actions.append(Pause(script.seconds))
        emit(events[at:])
        actions.append(End())
    elif fault == "missing_terminator":
        actions.append(End())
    elif fault == "reset_between":
        actions.append(Reset())
    elif fault in ("reset_mid_chunk", "cut_mid_chunk"):
        victim = events[at] if at < len(events) else sse_event(_FILLER)
        actions.append(CutMidEvent(victim, rst=fault == "reset_mid_chunk"))
    elif fault == "error_event":
        actions += [Emit(sse_event(script.error or _DEFAULT_ERROR)), End()]
    return Plan(actions=actions)


def script_fault(script: Script) -> Fault:
    """The fault a script applies, as recorded by the server."""
    return Fault(script.fault)


_USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def _null_usage(event: Event) -> Tuple[Event, Optional[Dict[str, Any]]]:
    """``event`` with ``"usage": null`` added if it is a chunk object without usage (and the object)."""
    if not isinstance(event, str):
        return event, None
    try:
        obj = json.loads(event)
    except ValueError:
        return event, None
    if not isinstance(obj, dict) or "usage" in obj or "error" in obj:
        return event, None
    # Appended as text: the script's own bytes stay as they were.
    text = event.rstrip()
    return ('{"usage": null}' if not obj else text[:-1] + ', "usage": null}'), obj


def as_asked(script: Script, path: str, body: Mapping[str, Any]) -> Script:
    """The script as the real API sends it for this request (see the module docstring)."""
    options = body.get("stream_options")
    if path not in (CHAT_PATH, COMPLETIONS_PATH) or not (isinstance(options, dict) and options.get("include_usage")):
        return script
    events: List[Event] = []
    envelope: Dict[str, Any] = {}
    for event in script.events:
        event, obj = _null_usage(event)
        if obj and "choices" in obj:
            envelope = obj
        events.append(event)
    at = script.at
    if "[DONE]" in events:
        done = events.index("[DONE]")
        usage = {k: envelope[k] for k in ("id", "object", "created", "model") if k in envelope}
        events.insert(done, json.dumps(dict(usage, choices=[], usage=_USAGE)))
        if at is not None and at > done:
            at += 1
    return replace(script, events=tuple(events), at=at)


def plan_scripted(header: str, path: str, body: Dict[str, Any]) -> Tuple[Plan, Fault]:
    """The fault server's planner for ``X-Script`` requests."""
    script = decode_script(header)
    return script_plan(as_asked(script, path, body)), script_fault(script)


register_planner("x-script", plan_scripted)
