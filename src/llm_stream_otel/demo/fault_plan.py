"""Pure half of the fault server: fault specs, deterministic text, wire payloads.

Nothing in here touches a socket or the clock (timestamps and ids are passed in),
so every fault's byte-level behaviour can be unit-tested without a network, and
the socket layer in :mod:`fault_server` stays a dumb executor of a plan.

Each wire protocol the server speaks is an :class:`Api` (how to read its
requests, which event builder answers them, what its HTTP errors look like);
:class:`Routes` is the dispatch table from request paths to them. The OpenAI
endpoints are defined here (:data:`OPENAI_ROUTES`); other protocols live in
their own modules (e.g. :mod:`gemini_events`) and the server joins the tables.

A *plan* is a list of :class:`Action` objects (emit an SSE event, pause, cut the
connection mid-event, reset, end the chunked body) or a single
:class:`PlainResponse` for non-streaming replies.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Pattern, Protocol, Sequence, Tuple, Union

__all__ = [
    "FAULT_NAMES",
    "STREAM_PATHS",
    "OPENAI",
    "OPENAI_ROUTES",
    "Api",
    "EventBuilder",
    "Routes",
    "Fault",
    "FaultSpecError",
    "FaultSettings",
    "RequestInfo",
    "Emit",
    "Pause",
    "CutMidEvent",
    "Reset",
    "End",
    "Fin",
    "Action",
    "PlainResponse",
    "Plan",
    "answer_for",
    "parse_mix",
    "resolve_settings",
    "apply_first",
    "prompt_key",
    "request_info",
    "build_plan",
    "error_body",
    "openai_error",
]

FAULT_NAMES = frozenset(
    {
        "none",
        "length",
        "content_filter",
        "tool_calls",
        "reset_mid_chunk",
        "reset_between",
        "cut_mid_chunk",
        "missing_terminator",
        "error_event",
        "stall",
        "http_500",
        "http_429",
        "http_503",
        "hang",
        "response_failed",
        "idle_cut",
        "stale_keepalive",
        "http_502",
        "http_504",
        "prompt_blocked",
        "overloaded",
    }
)
_KNOWN_KEYS = frozenset({"chunks", "delay", "first_delay", "after", "first", "usage", "seconds", "retry_after_ms",
                         "type", "cache_read", "cache_creation"})
_INT_KEYS = frozenset({"chunks", "after", "first", "usage", "cache_read", "cache_creation"})
_WORD_KEYS = frozenset({"type"})  # a word, not a number: error_event;type=overloaded_error

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"
STREAM_PATHS = (CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH)

_HTTP_FAULTS = {"http_500": 500, "http_429": 429, "http_503": 503, "overloaded": 529}
# An intermediary's own error page before any body: HTML from "nginx", not JSON.
_GATEWAY_FAULTS = {"http_502": 502, "http_504": 504}
_FINISH_FAULTS = {"none": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}
# Keys that still matter when a `first=K` fault degrades to `none` (they shape the answer).
_CONTENT_KEYS = ("chunks", "delay", "first_delay", "usage", "cache_read", "cache_creation")


class FaultSpecError(ValueError):
    """A fault spec that cannot be honoured; the server answers it with HTTP 400."""


# --------------------------------------------------------------------------- fault specs


@dataclass(frozen=True, eq=False)
class Fault:
    """A parsed fault spec such as ``stall;after=2;seconds=1.5``.

    Compares equal to its spec string so recorded requests can be checked with
    ``req.fault == "none"`` as well as ``req.fault.name == "none"``.
    """

    name: str
    params: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: Union[str, "Fault"]) -> "Fault":
        """Parse ``name;key=value;...``; raises :class:`FaultSpecError` on anything unknown."""
        if isinstance(spec, Fault):
            return spec
        parts = [p.strip() for p in str(spec).split(";") if p.strip()]
        if not parts:
            raise FaultSpecError("empty fault spec")
        name, params = parts[0].lower(), []
        if name not in FAULT_NAMES:
            raise FaultSpecError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULT_NAMES))}")
        for part in parts[1:]:
            params.append(_parse_param(part))
        return cls(name, tuple(params))

    @property
    def spec(self) -> str:
        """Canonical spec string (round-trips through :meth:`parse`)."""
        return ";".join([self.name] + [f"{k}={v}" for k, v in self.params])

    def get(self, key: str) -> Optional[str]:
        """Raw value of ``key`` or None."""
        for k, v in self.params:
            if k == key:
                return v
        return None

    def without_fault(self) -> "Fault":
        """The ``none`` fault keeping the keys that shape the answer (used once ``first=K`` is spent)."""
        return Fault("none", tuple((k, v) for k, v in self.params if k in _CONTENT_KEYS))

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Fault({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fault):
            return (self.name, self.params) == (other.name, other.params)
        if isinstance(other, str):
            return self.spec == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.spec)


def _parse_param(part: str) -> Tuple[str, str]:
    """Validate one ``key=value`` pair so typos fail loudly instead of silently not faulting."""
    key, sep, value = part.partition("=")
    key, value = key.strip().lower(), value.strip()
    if not sep or key not in _KNOWN_KEYS:
        raise FaultSpecError(f"bad fault parameter {part!r}; known keys: {', '.join(sorted(_KNOWN_KEYS))}")
    if key in _WORD_KEYS:
        if not re.fullmatch(r"[a-z_]{1,64}", value):
            raise FaultSpecError(f"fault parameter {key} needs a word of a-z and _, got {value!r}")
        return key, value
    try:
        number = int(value) if key in _INT_KEYS else float(value)
    except ValueError:
        raise FaultSpecError(f"fault parameter {key} needs a number, got {value!r}") from None
    if number < 0:
        raise FaultSpecError(f"fault parameter {key} must be >= 0")
    return key, value


def parse_mix(text: str) -> Dict[str, float]:
    """Parse the CLI form ``reset_mid_chunk=0.2,none=0.8`` (the weight is after the LAST ``=``)."""
    mix: Dict[str, float] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        spec, sep, weight = item.rpartition("=")
        if not sep or not spec:
            raise FaultSpecError(f"bad mix entry {item!r}; expected spec=weight")
        Fault.parse(spec)
        mix[spec] = float(weight)
    return mix


@dataclass(frozen=True)
class FaultSettings:
    """A fault with every knob resolved against the server defaults."""

    fault: Fault
    chunks: int
    delay: float
    first_delay: float
    after: int
    first: int
    usage: bool
    seconds: float
    retry_after_ms: float

    @property
    def name(self) -> str:
        return self.fault.name


def resolve_settings(fault: Fault, chunks: int, chunk_delay: float) -> FaultSettings:
    """Fill in defaults: ``after`` = chunks//2, ``seconds`` 30 for hang else 1.0."""

    def num(key: str, default: float) -> float:
        raw = fault.get(key)
        return default if raw is None else float(raw)

    n_chunks = int(num("chunks", chunks))
    return FaultSettings(
        fault=fault,
        chunks=n_chunks,
        delay=num("delay", chunk_delay),
        first_delay=num("first_delay", 0.0),
        after=min(int(num("after", n_chunks // 2)), n_chunks),
        first=int(num("first", 0)),
        usage=bool(int(num("usage", 0))),
        seconds=num("seconds", 30.0 if fault.name == "hang" else 1.0),
        retry_after_ms=num("retry_after_ms", 1.0),
    )


def apply_first(fault: Fault, attempt: int) -> Fault:
    """Honour ``first=K``: attempts 1..K get the fault, later attempts get ``none``."""
    limit = int(fault.get("first") or 0)
    if limit and attempt > limit:
        return fault.without_fault()
    return fault


# --------------------------------------------------------------------------- deterministic text

_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum eu fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est laborum"
).split()


def answer_for(prompt_text: str, n_chunks: int) -> List[str]:
    """Deterministic answer pieces (``"word "`` each) for a prompt.

    Piece ``i`` depends only on (prompt, i), so ``answer_for(p, n)`` is a prefix of
    ``answer_for(p, m)`` for n <= m and the server can recompute exactly what a
    client already received before a cut.
    """
    pieces = []
    for i in range(max(0, n_chunks)):
        digest = hashlib.sha256(f"{prompt_text}\x00{i}".encode("utf-8")).digest()
        word = _WORDS[int.from_bytes(digest[:4], "big") % len(_WORDS)]
        pieces.append((word.capitalize() if i == 0 else word) + " ")
    return pieces


def _remaining_pieces(pieces: Sequence[str], partial: str) -> Optional[List[str]]:
    """Pieces still missing after ``partial``, or None if partial isn't a non-empty prefix."""
    full = "".join(pieces)
    if not partial or not full.startswith(partial):
        return None
    out, pos = [], 0
    for piece in pieces:
        end = pos + len(piece)
        if end > len(partial):
            out.append(piece[max(0, len(partial) - pos) :])
        pos = end
    return out


# --------------------------------------------------------------------------- request inspection


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (string or list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts)
    return ""


def _first_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict) and msg.get("role") == "user":
                return _content_text(msg.get("content"))
    return ""


def _continuation_partial(messages: Any, chunks: int) -> Optional[int]:
    """Index of the assistant message holding a partial answer, if this is a 'continue' request.

    That is: ``[..., user, ..., assistant(non-empty prefix of the canonical answer), user]``.
    """
    if not isinstance(messages, list) or len(messages) < 3:
        return None
    prev, last = messages[-2], messages[-1]
    if not (isinstance(last, dict) and last.get("role") == "user"):
        return None
    if not (isinstance(prev, dict) and prev.get("role") == "assistant"):
        return None
    pieces = answer_for(_first_user_text(messages), chunks)
    if _remaining_pieces(pieces, _content_text(prev.get("content"))) is None:
        return None
    return len(messages) - 2


@dataclass(frozen=True)
class RequestInfo:
    """What the plan builder needs from a request body."""

    path: str
    body: Mapping[str, Any]
    prompt_text: str
    stream: bool
    model: str
    n: int
    include_usage: bool
    partial: str = ""  # chat continuation: the assistant prefix the client already has


def _prompt_and_partial(path: str, body: Mapping[str, Any], chunks: int) -> Tuple[str, str]:
    """Prompt text the answer is derived from, plus a chat continuation prefix ("" if none)."""
    if path == CHAT_PATH:
        messages = body.get("messages")
        idx = _continuation_partial(messages, chunks)
        partial = _content_text(messages[idx].get("content")) if idx is not None else ""
        return _first_user_text(messages), partial
    if path == COMPLETIONS_PATH:
        prompt = body.get("prompt")
        text = prompt[0] if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) else prompt
        return (text if isinstance(text, str) else json.dumps(prompt, sort_keys=True)), ""
    inp = body.get("input")
    return (inp if isinstance(inp, str) else _first_user_text(inp)), ""


def request_info(path: str, body: Mapping[str, Any], chunks: int) -> RequestInfo:
    """Extract prompt text, stream flag, n, usage and any chat continuation prefix.

    ``chunks`` must be the resolved chunk count: the canonical answer (and thus the
    continuation detection) depends on it, so a continuation request must be sent
    with the same ``chunks`` as the cut request (same X-Fault header or server default).
    """
    stream_options = body.get("stream_options") or {}
    text, partial = _prompt_and_partial(path, body, chunks)
    try:
        n = max(1, int(body.get("n") or 1))
    except (TypeError, ValueError):
        n = 1
    return RequestInfo(
        path=path,
        body=body,
        prompt_text=text,
        stream=bool(body.get("stream")),
        model=str(body.get("model") or "fault-server-model"),
        n=n if path != RESPONSES_PATH else 1,
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        partial=partial,
    )


def prompt_key(path: str, body: Optional[Mapping[str, Any]], chunks: int) -> str:
    """Key for the ``first=K`` attempt counter: path + canonical JSON of the prompt.

    A chat continuation (assistant partial + final user turn) counts as another
    attempt of the ORIGINAL prompt, so ``first=1`` cuts once and the continuation
    is served cleanly.
    """
    body = body or {}
    if path == CHAT_PATH:
        prompt: Any = body.get("messages")
        if _continuation_partial(prompt, chunks) is not None:
            prompt = prompt[:-2]
    elif path == COMPLETIONS_PATH:
        prompt = body.get("prompt")
    else:
        prompt = body.get("input")
    return path + "\x00" + json.dumps(prompt, sort_keys=True, default=str)


# --------------------------------------------------------------------------- plan actions


@dataclass(frozen=True)
class Emit:
    """Write one complete SSE event as one chunked frame."""

    data: bytes


@dataclass(frozen=True)
class Pause:
    """Sleep before the next action (interruptible by server stop)."""

    seconds: float


@dataclass(frozen=True)
class CutMidEvent:
    """Announce a frame for ``data``, send about half of it, then RST (``rst``) or FIN."""

    data: bytes
    rst: bool


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST right now."""


@dataclass(frozen=True)
class End:
    """Terminate the chunked body cleanly (``0\\r\\n\\r\\n``)."""


@dataclass(frozen=True)
class Fin:
    """Close with a FIN at a frame boundary, without the terminating chunk (a proxy's idle cut)."""


Action = Union[Emit, Pause, CutMidEvent, Reset, End, Fin]


@dataclass(frozen=True)
class PlainResponse:
    """A non-streaming reply; ``truncate`` cuts the body in half then RSTs or FINs."""

    status: int
    body: Dict[str, Any]
    headers: Tuple[Tuple[str, str], ...] = ()
    pause: float = 0.0
    truncate: Optional[str] = None  # None | "rst" | "fin"
    html: Optional[str] = None  # an intermediary's error page instead of the JSON body


@dataclass(frozen=True)
class Plan:
    """Either ``plain`` (non-streaming) or ``actions`` (SSE stream after 200 headers)."""

    plain: Optional[PlainResponse] = None
    actions: List[Action] = field(default_factory=list)


def error_body(message: str, type_: str = "invalid_request_error", code: Optional[str] = None) -> Dict[str, Any]:
    """OpenAI-style error envelope."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def sse(data: Mapping[str, Any], event: Optional[str] = None) -> bytes:
    """Encode one SSE event (``event:`` line only for the Responses API)."""
    payload = json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode("utf-8")


DONE = b"data: [DONE]\n\n"

# --------------------------------------------------------------------------- per-endpoint event builders


@dataclass
class _Ids:
    """Ids and timestamp injected by the caller, so plans are reproducible."""

    token: str
    created: int
    fingerprint: str = "fp_faultsrv"


def _usage_numbers(info: RequestInfo, pieces: Sequence[str]) -> Tuple[int, int]:
    prompt_tokens = max(1, len(info.prompt_text.split()))
    return prompt_tokens, len(pieces) * info.n


class _ChatLike:
    """Builds chat.completion.chunk / text_completion chunks (same shape, different choice body)."""

    def __init__(self, info: RequestInfo, ids: _Ids, st: FaultSettings, pieces: Sequence[str]) -> None:
        self.info, self.ids, self.st, self.pieces = info, ids, st, pieces
        self.chat = info.path == CHAT_PATH
        self.usage = info.include_usage or st.usage
        self.tool_args = _tool_arguments(info.prompt_text, st.chunks) if st.name == "tool_calls" else []

    def _envelope(self, choices: List[Dict[str, Any]]) -> Dict[str, Any]:
        env: Dict[str, Any] = {
            "id": ("chatcmpl-" if self.chat else "cmpl-") + self.ids.token,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.ids.created,
            "model": self.info.model,
            "system_fingerprint": self.ids.fingerprint,
            "choices": choices,
        }
        if self.chat:
            env["service_tier"] = "default"
        if self.usage:
            env["usage"] = None
        return env

    def _choice(self, index: int, delta: Dict[str, Any], finish: Optional[str]) -> Dict[str, Any]:
        if self.chat:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"text": delta.get("content") or "", "index": index, "logprobs": None, "finish_reason": finish}

    def preamble(self) -> List[bytes]:
        return []

    @property
    def n_steps(self) -> int:
        return len(self.tool_args or self.pieces)

    def step(self, i: int) -> List[bytes]:
        """Events for content chunk ``i``: one chunk per choice (as OpenAI does for n > 1)."""
        if self.tool_args:
            delta = self._tool_delta(i, self.tool_args[i])
        elif i == 0:
            delta = {"role": "assistant", "content": self.pieces[0], "refusal": None}
        else:
            delta = {"content": self.pieces[i]}
        return [sse(self._envelope([self._choice(c, delta, None)])) for c in range(self.info.n)]

    def _tool_delta(self, i: int, args: str) -> Dict[str, Any]:
        call: Dict[str, Any] = {"index": 0, "function": {"arguments": args}}
        if i == 0:
            call = {"index": 0, "id": "call_" + self.ids.token[:24], "type": "function",
                    "function": {"name": _tool_name(self.info.body), "arguments": args}}
            return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        return {"tool_calls": [call]}

    def finish(self, reason: str) -> List[bytes]:
        events = [sse(self._envelope([self._choice(c, {}, reason)])) for c in range(self.info.n)]
        if self.usage:
            prompt, completion = _usage_numbers(self.info, self.tool_args or self.pieces)
            env = self._envelope([])
            env["usage"] = _chat_usage(prompt, completion)
            events.append(sse(env))
        return events + [DONE]

    def error_event(self, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "param": None, "code": "stream_interrupted"}})

    def failed(self, message: str) -> List[bytes]:  # pragma: no cover - rejected in _check_endpoint
        raise FaultSpecError("response_failed only applies to /v1/responses")

    def whole(self, reason: str) -> Dict[str, Any]:
        """Non-streaming body."""
        text = "".join(self.pieces)
        prompt, completion = _usage_numbers(self.info, self.tool_args or self.pieces)
        if self.chat:
            choices = [{"index": c, "message": self._message(text), "logprobs": None, "finish_reason": reason}
                       for c in range(self.info.n)]
        else:
            choices = [{"text": text, "index": c, "logprobs": None, "finish_reason": reason} for c in range(self.info.n)]
        env = self._envelope(choices)
        env["object"] = "chat.completion" if self.chat else "text_completion"
        env["usage"] = _chat_usage(prompt, completion)
        return env

    def _message(self, text: str) -> Dict[str, Any]:
        msg: Dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if self.tool_args:
            msg["content"] = None
            msg["tool_calls"] = [{"id": "call_" + self.ids.token[:24], "type": "function",
                                  "function": {"name": _tool_name(self.info.body), "arguments": "".join(self.tool_args)}}]
        return msg


def _chat_usage(prompt: int, completion: int) -> Dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _tool_name(body: Mapping[str, Any]) -> str:
    """First declared function name (chat or responses tool shape), else a fixed one."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            if isinstance(fn.get("name"), str):
                return fn["name"]
    return "lookup"


def _tool_arguments(prompt_text: str, n_chunks: int) -> List[str]:
    """Deterministic JSON arguments split into ``n_chunks`` fragments."""
    args = json.dumps({"query": "".join(answer_for(prompt_text, n_chunks)).strip()})
    n = max(1, n_chunks)
    size = -(-len(args) // n)
    return [args[i * size : (i + 1) * size] for i in range(n)]


class _Responses:
    """Builds Responses API events with a running ``sequence_number``."""

    def __init__(self, info: RequestInfo, ids: _Ids, st: FaultSettings, pieces: Sequence[str]) -> None:
        self.info, self.ids, self.st, self.pieces = info, ids, st, pieces
        self.seq = 0
        self.sent: List[str] = []
        self.tool = st.name == "tool_calls"
        self.tool_args = _tool_arguments(info.prompt_text, st.chunks) if self.tool else []
        self.item_id = ("fc_" if self.tool else "msg_") + ids.token

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(data, event=type_)

    def response(self, status: str, output: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
        body = self.info.body
        resp: Dict[str, Any] = {
            "id": "resp_" + self.ids.token,
            "object": "response",
            "created_at": self.ids.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.info.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        resp.update(extra)
        return resp

    def _item(self, status: str, text: Optional[str] = None) -> Dict[str, Any]:
        if self.tool:
            return {"id": self.item_id, "type": "function_call", "status": status, "call_id": "call_" + self.ids.token[:24],
                    "name": _tool_name(self.info.body), "arguments": "".join(self.tool_args) if text is not None else ""}
        content = [] if text is None else [self._part(text)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _part(text: str) -> Dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _usage(self) -> Dict[str, Any]:
        prompt, completion = _usage_numbers(self.info, self.tool_args or self.pieces)
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion}

    def preamble(self) -> List[bytes]:
        events = [
            self._event("response.created", response=self.response("in_progress", [])),
            self._event("response.in_progress", response=self.response("in_progress", [])),
            self._event("response.output_item.added", output_index=0, item=self._item("in_progress")),
        ]
        if not self.tool:
            events.append(self._event("response.content_part.added", item_id=self.item_id, output_index=0,
                                      content_index=0, part=self._part("")))
        return events

    @property
    def n_steps(self) -> int:
        return len(self.tool_args or self.pieces)

    def step(self, i: int) -> List[bytes]:
        """One delta event; must be called in order (it consumes a sequence number)."""
        if self.tool:
            return [self._event("response.function_call_arguments.delta", item_id=self.item_id, output_index=0,
                                delta=self.tool_args[i])]
        self.sent.append(self.pieces[i])
        return [self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                            delta=self.pieces[i], logprobs=[])]

    def _close_item(self, status: str) -> Tuple[List[bytes], Dict[str, Any]]:
        if self.tool:
            args = "".join(self.tool_args)
            item = self._item(status, args)
            return [self._event("response.function_call_arguments.done", item_id=self.item_id, output_index=0,
                                name=item["name"], arguments=args),
                    self._event("response.output_item.done", output_index=0, item=item)], item
        text = "".join(self.pieces)
        item = self._item(status, text)
        return [
            self._event("response.output_text.done", item_id=self.item_id, output_index=0, content_index=0,
                        text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=self.item_id, output_index=0, content_index=0,
                        part=self._part(text)),
            self._event("response.output_item.done", output_index=0, item=item),
        ], item

    def finish(self, reason: str) -> List[bytes]:
        if reason in ("length", "content_filter"):
            events, item = self._close_item("incomplete")
            why = "max_output_tokens" if reason == "length" else "content_filter"
            resp = self.response("incomplete", [item], incomplete_details={"reason": why}, usage=self._usage())
            return events + [self._event("response.incomplete", response=resp)]
        events, item = self._close_item("completed")
        resp = self.response("completed", [item], usage=self._usage(), completed_at=self.ids.created)
        return events + [self._event("response.completed", response=resp)]

    def error_event(self, message: str) -> bytes:
        return self._event("error", code="server_error", message=message, param=None)

    def failed(self, message: str) -> List[bytes]:
        item = self._item("incomplete", "".join(self.sent))
        resp = self.response("failed", [item], error={"code": "server_error", "message": message})
        return [self._event("response.failed", response=resp)]

    def whole(self, reason: str) -> Dict[str, Any]:
        if reason in ("length", "content_filter"):
            why = "max_output_tokens" if reason == "length" else "content_filter"
            return self.response("incomplete", [self._item("incomplete", "".join(self.pieces))],
                                 incomplete_details={"reason": why}, usage=self._usage())
        return self.response("completed", [self._item("completed", "".join(self.pieces))], usage=self._usage(),
                             completed_at=self.ids.created)


# --------------------------------------------------------------------------- planning


def _retry_headers(st: FaultSettings, status: int) -> Tuple[Tuple[str, str], ...]:
    """Retry hints that keep the SDK's automatic retries fast (retry-after-ms wins over retry-after)."""
    headers = [("retry-after-ms", f"{st.retry_after_ms:g}")]
    if status == 429:
        headers.append(("retry-after", "0"))
    return tuple(headers)


_OPENAI_HTTP_ERRORS = {
    429: ("Rate limit reached (injected by fault server).", "requests", "rate_limit_exceeded"),
    503: ("The server is overloaded (injected by fault server).", "server_error", "overloaded"),
    500: ("The server had an error (injected by fault server).", "server_error", None),
}


def openai_error(status: int, message: Optional[str] = None, code: Optional[str] = None) -> Dict[str, Any]:
    """OpenAI's error envelope for an HTTP status (the injected ones have their own words)."""
    default, type_, default_code = _OPENAI_HTTP_ERRORS.get(status, ("", "invalid_request_error", None))
    if status >= 500 and status not in _OPENAI_HTTP_ERRORS:
        type_ = "server_error"
    return error_body(message or default, type_, code or default_code)


def _http_fault(st: FaultSettings, status: int) -> PlainResponse:
    return PlainResponse(status, openai_error(status), _retry_headers(st, status))


def _stream_error_reply() -> PlainResponse:
    """What a non-streaming request gets for ``error_event`` / ``response_failed``."""
    return PlainResponse(500, error_body("Injected stream error.", "server_error", "server_error"))


def _gateway_fault(st: FaultSettings) -> PlainResponse:
    """What nginx answers when the upstream is down (502) or timed out before the headers (504)."""
    status = _GATEWAY_FAULTS[st.name]
    phrase = {502: "Bad Gateway", 504: "Gateway Time-out"}[status]
    page = f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    return PlainResponse(status, {}, (("server", "nginx"),) + _retry_headers(st, status), pause=st.first_delay, html=page)


def _openai_builder(info: RequestInfo, ids: _Ids, st: FaultSettings, pieces: Sequence[str]) -> Union[_ChatLike, _Responses]:
    cls = _Responses if info.path == RESPONSES_PATH else _ChatLike
    return cls(info, ids, st, pieces)


def _check_endpoint(info: RequestInfo, st: FaultSettings) -> None:
    if st.name == "response_failed" and info.path != RESPONSES_PATH:
        raise FaultSpecError("fault response_failed only applies to /v1/responses")
    if st.name == "tool_calls" and info.path == COMPLETIONS_PATH:
        raise FaultSpecError("fault tool_calls does not apply to /v1/completions")
    if st.name == "prompt_blocked":
        raise FaultSpecError("fault prompt_blocked only applies to the Gemini API")
    if st.name == "overloaded":
        raise FaultSpecError("fault overloaded (HTTP 529) only applies to the Anthropic API")


# --------------------------------------------------------------------------- the APIs the server speaks


class EventBuilder(Protocol):
    """The events of one answer, in order; the plan decides which are sent and how."""

    @property
    def n_steps(self) -> int: ...

    def preamble(self) -> List[bytes]: ...

    def step(self, i: int) -> List[bytes]: ...

    def finish(self, reason: str) -> List[bytes]: ...

    def error_event(self, message: str) -> bytes: ...

    def failed(self, message: str) -> List[bytes]: ...

    def whole(self, reason: str) -> Dict[str, Any]: ...


@dataclass(frozen=True)
class Api:
    """One wire protocol: how to read its requests and build its answers.

    ``builder(info, ids, settings, pieces)`` returns an event builder with the
    interface of :class:`_ChatLike` (``preamble``/``step``/``finish``/
    ``error_event``/``failed``/``whole``/``n_steps``), so every fault works for
    every API through the same :func:`build_plan`.
    """

    name: str
    request_info: Callable[[str, Mapping[str, Any], int], RequestInfo]
    prompt_key: Callable[[str, Optional[Mapping[str, Any]], int], str]
    builder: Callable[[RequestInfo, _Ids, FaultSettings, Sequence[str]], EventBuilder]
    http_error: Callable[[FaultSettings, int], PlainResponse]  # an injected 429/500/503 before any body
    stream_error_reply: Callable[[], PlainResponse]  # a non-streaming request's error_event
    check: Callable[[RequestInfo, FaultSettings], None]  # raises FaultSpecError for faults it cannot honour
    #: (status, message, code) -> the API's error body, for the server's own 400/404/405 replies
    error: Callable[[int, str, Optional[str]], Dict[str, Any]] = openai_error
    headers: Tuple[Tuple[str, str], ...] = ()  # response headers the real API adds
    request_id_header: str = "x-request-id"

    def response_headers(self, request_id: str) -> Tuple[Tuple[str, str], ...]:
        """Its request id header and the other headers the real API sends."""
        return ((self.request_id_header, request_id),) + self.headers


OPENAI = Api("openai", request_info, prompt_key, _openai_builder, _http_fault, _stream_error_reply, _check_endpoint,
             headers=(("openai-version", "2020-10-01"), ("openai-processing-ms", "1")))
Route = Tuple[Union[str, Pattern[str]], Api]
OPENAI_ROUTES: Tuple[Route, ...] = tuple((path, OPENAI) for path in STREAM_PATHS)


class Routes:
    """The dispatch table from a request path (no query) to its :class:`Api`.

    A route is an exact path or a compiled pattern (for APIs that put the model
    in the path); exact paths are looked up first, then patterns in order.
    """

    def __init__(self, *tables: Sequence[Route]) -> None:
        self._exact: Dict[str, Api] = {}
        self._patterns: List[Tuple[Pattern[str], Api]] = []
        for table in tables:
            for route, api in table:
                if isinstance(route, str):
                    self._exact[route] = api
                else:
                    self._patterns.append((route, api))

    def match(self, path: str) -> Optional[Api]:
        api = self._exact.get(path)
        if api is not None:
            return api
        for pattern, candidate in self._patterns:
            if pattern.fullmatch(path):
                return candidate
        return None


# --------------------------------------------------------------------------- planning (continued)


def _builder(api: Api, info: RequestInfo, ids: _Ids, st: FaultSettings) -> EventBuilder:
    pieces = answer_for(info.prompt_text, st.chunks)
    if info.partial:
        pieces = _remaining_pieces(pieces, info.partial) or []
    return api.builder(info, ids, st, pieces)


def _plain_plan(api: Api, st: FaultSettings, b: EventBuilder) -> Plan:
    """Non-streaming: transport faults truncate the JSON body, timing faults delay it."""
    name = st.name
    reason = _FINISH_FAULTS.get(name, "stop")
    if name in ("error_event", "response_failed"):
        return Plan(plain=api.stream_error_reply())
    pause = st.seconds if name in ("stall", "hang") else 0.0
    truncate = {"reset_mid_chunk": "rst", "reset_between": "rst", "cut_mid_chunk": "fin",
                "missing_terminator": "fin"}.get(name)
    return Plan(plain=PlainResponse(200, b.whole(reason), pause=pause + st.first_delay, truncate=truncate))


def build_plan(info: RequestInfo, st: FaultSettings, token: str, created: int, api: Api = OPENAI) -> Plan:
    """Turn a request + resolved fault into what the socket layer must do."""
    api.check(info, st)
    if st.name in _HTTP_FAULTS:
        return Plan(plain=api.http_error(st, _HTTP_FAULTS[st.name]))
    if st.name in _GATEWAY_FAULTS:
        return Plan(plain=_gateway_fault(st))
    b = _builder(api, info, _Ids(token, created), st)
    if not info.stream:
        return _plain_plan(api, st, b)
    return Plan(actions=_stream_actions(st, b))


_Builder = EventBuilder
_ERROR_MESSAGE = "The stream was interrupted (injected by fault server)."


def _next_event(b: _Builder, i: int) -> bytes:
    """The event that would have come next: content chunk ``i`` or the first finish event."""
    return (b.step(i) if i < b.n_steps else b.finish("stop"))[0]


_ABORTS: Dict[str, Callable[[_Builder, int], List[Action]]] = {
    "reset_mid_chunk": lambda b, i: [CutMidEvent(_next_event(b, i), rst=True)],
    "cut_mid_chunk": lambda b, i: [CutMidEvent(_next_event(b, i), rst=False)],
    "reset_between": lambda b, i: [Reset()],
    "missing_terminator": lambda b, i: [End()],
    "error_event": lambda b, i: [Emit(b.error_event(_ERROR_MESSAGE)), End()],
    "response_failed": lambda b, i: [Emit(e) for e in b.failed(_ERROR_MESSAGE)] + [End()],
}


def _stream_actions(st: FaultSettings, b: _Builder) -> List[Action]:
    """The event/timing/abort sequence for one streamed response.

    ``after`` counts content chunks: the fault fires once ``after`` chunks are out.
    ``delay`` separates chunks (and the last chunk from the finish events); ``stall``
    replaces that gap at position ``after`` with ``seconds``.
    """
    actions: List[Action] = []
    if st.name == "hang":
        actions.append(Pause(st.seconds))
    actions += [Emit(e) for e in b.preamble()]
    if st.first_delay:
        actions.append(Pause(st.first_delay))
    after = min(st.after, b.n_steps)
    for i in range(b.n_steps + 1):
        if i == after and st.name in _ABORTS:
            return actions + _ABORTS[st.name](b, i)
        if i == after and st.name == "idle_cut":
            # A proxy's idle/read timeout: `seconds` of silence, then the proxy closes.
            return actions + [Pause(st.seconds), Fin()]
        if i == after and st.name == "stall":
            actions.append(Pause(st.seconds))
        elif i and st.delay:
            actions.append(Pause(st.delay))
        if i < b.n_steps:
            actions += [Emit(e) for e in b.step(i)]
    return actions + [Emit(e) for e in b.finish(_FINISH_FAULTS.get(st.name, "stop"))] + [End()]
