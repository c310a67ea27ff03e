"""The real-streams corpus: read it, derive faults from each body, and say what
a correct instrumentation must report, from the bytes alone.

The oracle here is independent of the product: it splits the SSE body itself
(per the SSE spec: lines, blank line dispatches), decides which items the SDK
yields (up to ``[DONE]`` or an error object), and applies the outcome rules of
the README to them. It never imports ``llm_stream_otel``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

CORPUS = os.environ.get("LLM_STREAM_CORPUS", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "real-streams"))
if not os.path.isdir(CORPUS):
    CORPUS = "/work/shared/real-streams"

FAULT_KINDS = (
    "replay",
    "fin_in_event",
    "rst_in_event",
    "end_before_terminal",
    "end_after_terminal",
    "finish_removed",
)
_ENDPOINT_KIND = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/completions": "completions"}
_LINE = re.compile(rb"\r\n|\r|\n")
_LENGTH = {"max_output_tokens": "length", "content_filter": "content_filter"}
_SEVERITY = {"completed": 0, "length": 1, "content_filter": 2}
_FINISH_OUTCOME = {"length": "length", "max_tokens": "length", "content_filter": "content_filter"}


@dataclass
class Event:
    data: str
    start: int  # offset of the event's first line
    end: int  # offset just after the blank line that dispatched it


@dataclass
class Body:
    name: str
    kind: str  # chat | responses | completions
    azure: bool
    model: str
    raw: bytes
    events: List[Event]


@dataclass
class Expected:
    outcome: str
    reason: Optional[str]
    finish_reasons: List[str]
    chunks: int
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    response_id: Optional[str]
    response_model: Optional[str]
    finish_reason_missing: bool
    error_after_end: bool
    raises: bool


def names() -> List[str]:
    return sorted(f[:-4] for f in os.listdir(CORPUS) if f.endswith(".sse"))


def event_count(name: str) -> int:
    with open(os.path.join(CORPUS, name + ".json"), encoding="utf-8") as fh:
        return int(json.load(fh)["events"])


def load(name: str) -> Body:
    with open(os.path.join(CORPUS, name + ".json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    with open(os.path.join(CORPUS, name + ".sse"), "rb") as fh:
        raw = fh.read()
    request = meta.get("request") or {}
    model = request.get("model") if isinstance(request.get("model"), str) else "gpt-4o-mini"
    host = meta.get("host") or ""
    return Body(name, _ENDPOINT_KIND[meta["endpoint"]], host.endswith("openai.azure.com"), model, raw, split_events(raw))


def split_events(raw: bytes) -> List[Event]:
    """SSE events with their byte offsets; a trailing event without its blank line is not dispatched."""
    events: List[Event] = []
    data: List[str] = []
    has_field = False
    start = pos = 0
    while pos <= len(raw):
        match = _LINE.search(raw, pos)
        if match is None:
            break  # a last line without its end: never dispatched
        line = raw[pos : match.start()].decode("utf-8")
        nxt = match.end()
        if not line:
            if has_field:
                events.append(Event("\n".join(data), start, nxt))
            data, has_field, start = [], False, nxt
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            if name in ("data", "event", "id", "retry"):
                has_field = True
        else:
            if not has_field and not data:
                start = nxt
        pos = nxt
    return events


def _json(event: Event) -> Any:
    try:
        return json.loads(event.data)
    except ValueError:
        return None


def _is_error_object(data: Any) -> bool:
    return isinstance(data, dict) and bool(data.get("error"))


def terminal_index(body: Body, events: List[Event]) -> int:
    """The event that ends the stream: [DONE], an error object, a finish, or a Responses terminal event."""
    for index, event in enumerate(events):
        if event.data.startswith("[DONE]"):
            return index
        data = _json(event)
        if _is_error_object(data):
            return index
        if not isinstance(data, dict):
            continue
        if body.kind == "responses":
            if data.get("type") in ("response.completed", "response.incomplete", "response.failed", "error"):
                return index
        elif any(isinstance(c, dict) and c.get("finish_reason") for c in data.get("choices") or []):
            return index
    return max(len(events) - 1, 0)


def derive(body: Body, kind: str) -> Optional[Tuple[bytes, str]]:
    """(bytes to serve, ending) for a fault kind, or None if it does not apply to this body."""
    raw, events = body.raw, body.events
    if kind == "replay":
        return raw, "clean"
    if not events:
        return None
    term = events[terminal_index(body, events)]
    if kind in ("fin_in_event", "rst_in_event"):
        return raw[: term.start + max(1, (term.end - term.start) // 2)], kind[:3]
    if kind == "end_before_terminal":
        return raw[: term.start], "clean"
    if kind == "end_after_terminal":
        return raw[: term.end], "clean"
    if kind == "finish_removed":
        if body.kind == "responses" or not any(e.data.startswith("[DONE]") for e in events):
            return None
        out = []
        for event in events:
            data = _json(event)
            if isinstance(data, dict):
                for choice in data.get("choices") or []:
                    if isinstance(choice, dict) and "finish_reason" in choice:
                        choice["finish_reason"] = None
                out.append(b"data: " + json.dumps(data).encode("utf-8") + b"\n\n")
            else:
                out.append(b"data: " + event.data.encode("utf-8") + b"\n\n")
        return b"".join(out), "clean"
    raise ValueError(kind)


def _tokens(usage: Any, prompt: str, completion: str) -> Optional[Tuple[Any, Any]]:
    if isinstance(usage, dict):
        return usage.get(prompt), usage.get(completion)
    return None


def expect(body: Body, served: bytes, ending: str) -> Expected:
    """What the instrumentation must report for ``served`` ended by ``ending``."""
    events = split_events(served)
    items: List[dict] = []
    done = error_object = False
    error_data: Any = None
    for event in events:
        if event.data.startswith("[DONE]"):
            done = True
            break
        data = _json(event)
        if _is_error_object(data):
            error_object, error_data = True, data
            break
        items.append(data)
    finished: Dict[int, str] = {}
    order: List[str] = []
    max_choice = -1
    usage = groq_usage = None
    response_id = response_model = None
    error_event = False
    for data in items:
        if not isinstance(data, dict):
            continue
        if body.kind == "responses":
            kind = data.get("type")
            response = data.get("response") if isinstance(data.get("response"), dict) else None
            if response is not None:
                response_id = response_id or response.get("id") or None
                response_model = response_model or response.get("model") or None
                if response.get("usage"):
                    usage = _tokens(response["usage"], "input_tokens", "output_tokens")
            if kind == "response.completed" and 0 not in finished:
                finished[0] = "stop"
                order.append("stop")
            elif kind == "response.incomplete" and 0 not in finished:
                reason = ((response or {}).get("incomplete_details") or {}).get("reason")
                finished[0] = _LENGTH.get(reason, reason or "length")
                order.append(finished[0])
            elif kind in ("response.failed", "error"):
                error_event = True
            max_choice = max(max_choice, 0 if finished else -1)
            continue
        response_id = response_id or data.get("id") or None
        response_model = response_model or data.get("model") or None
        for choice in data.get("choices") or []:
            index = choice.get("index") or 0
            max_choice = max(max_choice, index)
            reason = choice.get("finish_reason")
            if reason and index not in finished:
                finished[index] = reason
                order.append(reason)
                groq = (data.get("x_groq") or {}).get("usage")
                if groq and groq_usage is None:
                    groq_usage = _tokens(groq, "prompt_tokens", "completion_tokens")
        if data.get("usage"):
            usage = _tokens(data["usage"], "prompt_tokens", "completion_tokens")
    if usage is None:
        usage = groq_usage
    if usage is None and error_object and isinstance(error_data.get("usage"), dict):
        usage = _tokens(error_data["usage"], "prompt_tokens", "completion_tokens")
    terminal = bool(finished) and len(finished) > max_choice
    worst = "completed"
    for reason in order:
        outcome = _FINISH_OUTCOME.get(reason, "completed")
        if _SEVERITY[outcome] > _SEVERITY[worst]:
            worst = outcome
    # How the SDK's read ends: an error object raises; a cut body raises unless [DONE] came first.
    raises = error_object or (ending != "clean" and not done)
    complete = terminal or done
    missing = False
    after = False
    if error_event:
        outcome, reason_out = "truncated", "error_event"
    elif complete:
        outcome, reason_out, missing, after = worst, None, not terminal, raises
    elif error_object:
        outcome, reason_out = "truncated", "error_event"
    elif raises:
        outcome, reason_out = "truncated", "incomplete_read" if ending == "fin" else "connection_reset"
    else:
        outcome, reason_out = "truncated", "missing_terminator"
    tokens = usage or (None, None)
    return Expected(
        outcome, reason_out, list(dict.fromkeys(order)), len(items), tokens[0], tokens[1],
        response_id, response_model, missing, after, raises,
    )


@dataclass
class Results:
    """Cases, OK and wrong per fault kind; the first few mismatches, for the message."""

    by_kind: Dict[str, List[int]] = field(default_factory=dict)
    wrong: List[str] = field(default_factory=list)

    def add(self, kind: str, ok: bool, detail: str = "") -> None:
        row = self.by_kind.setdefault(kind, [0, 0, 0])
        row[0] += 1
        row[1 if ok else 2] += 1
        if not ok:
            self.wrong.append(detail)

    def table(self) -> str:
        lines = ["| fault kind | cases | OK | wrong |", "|---|---|---|---|"]
        total = [0, 0, 0]
        for kind in FAULT_KINDS:
            if kind in self.by_kind:
                row = self.by_kind[kind]
                lines.append(f"| {kind} | {row[0]} | {row[1]} | {row[2]} |")
                total = [a + b for a, b in zip(total, row)]
        lines.append(f"| **total** | {total[0]} | {total[1]} | {total[2]} |")
        return "\n".join(lines)
