"""Anthropic Messages API (``POST /v1/messages``) stream events, byte for byte.

The wire format of the real API: every event is ``event: <type>`` plus one
compact JSON ``data:`` line whose ``type`` repeats the event name; ``ping``
keeps its own spacing (``{"type": "ping"}``). A stream is::

    message_start                       id, model, input usage (cache read / creation)
    content_block_start                 one text (or tool_use) block
    ping
    content_block_delta ...             text_delta / input_json_delta
    content_block_stop
    message_delta                       stop_reason + cumulative usage (output)
    message_stop                        the terminator

and a failure after the 200 is an ``event: error`` with the same envelope as
an HTTP error body (``{"type": "error", "error": {"type": "overloaded_error",
...}}``), after which the server closes the body.

:class:`MessagesEvents` has the interface of the other builders in
:mod:`fault_plan` (``preamble`` / ``step`` / ``finish`` / ``error_event`` /
``failed`` / ``whole`` / ``n_steps``) so every fault plan works on it. It
takes plain values (no fault-plan types), so this module depends on nothing
else in the package.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .fault_plan import (
    Api,
    FaultSettings,
    FaultSpecError,
    PlainResponse,
    RequestInfo,
    Route,
    _content_text,
    _first_user_text,
    _Ids,
    _remaining_pieces,
    _retry_headers,
    _tool_arguments,
    _tool_name,
    _usage_numbers,
    answer_for,
)

MESSAGES_PATH = "/v1/messages"

__all__ = ["ERROR_TYPES", "STOP_REASONS", "MessagesEvents", "error_envelope", "http_error_type", "event"]

# Our neutral finish reasons (the fault plan's) -> the API's stop_reason.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use"}
# The error types the API documents, with the message it sends for each.
ERROR_TYPES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Permission denied",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit (injected by fault server).",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}
_HTTP_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                     404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                     529: "overloaded_error"}
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def event(data: Mapping[str, Any]) -> bytes:
    """One SSE event as the API writes it: ``event:`` = the data's ``type``, compact JSON."""
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode("utf-8")


def http_error_type(status: int) -> str:
    """The error ``type`` the API uses for an HTTP status (5xx other than 504/529: ``api_error``)."""
    return _HTTP_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_envelope(type_: str, message: Optional[str] = None, request_id: Optional[str] = None) -> Dict[str, Any]:
    """The API's error body, also the data of an ``error`` event."""
    body: Dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message or ERROR_TYPES.get(type_, type_)}}
    if request_id:
        body["request_id"] = request_id
    return body


class MessagesEvents:
    """Builds one Messages API stream (or the non-streaming ``message``).

    ``pieces`` are the text deltas, or ``tool_args`` the ``input_json_delta``
    fragments of one ``tool_use`` block. ``input_tokens`` excludes the cache:
    the API reports cache reads and writes apart from it.
    """

    def __init__(
        self,
        message_id: str,
        model: str,
        pieces: Sequence[str],
        input_tokens: int,
        tool_args: Sequence[str] = (),
        tool_name: str = "lookup",
        tool_id: str = "toolu_faultsrv",
        cache_read: int = 0,
        cache_creation: int = 0,
        error_type: str = "overloaded_error",
        request_id: str = "req_faultsrv",
    ) -> None:
        self.message_id, self.model, self.pieces = message_id, model, list(pieces)
        self.tool_args, self.tool_name, self.tool_id = list(tool_args), tool_name, tool_id
        self.input_tokens, self.cache_read, self.cache_creation = input_tokens, cache_read, cache_creation
        self.error_type, self.request_id = error_type, request_id

    @property
    def n_steps(self) -> int:
        return len(self.tool_args or self.pieces)

    def _usage(self, output_tokens: int) -> Dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_creation, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, content: List[Dict[str, Any]], stop_reason: Optional[str], output_tokens: int) -> Dict[str, Any]:
        return {"model": self.model, "id": self.message_id, "type": "message", "role": "assistant", "content": content,
                "stop_reason": stop_reason, "stop_sequence": None, "usage": self._usage(output_tokens)}

    def _block(self, complete: bool) -> Dict[str, Any]:
        if self.tool_args:
            tool_input = json.loads("".join(self.tool_args)) if complete else {}
            return {"type": "tool_use", "id": self.tool_id, "name": self.tool_name, "input": tool_input}
        return {"type": "text", "text": "".join(self.pieces) if complete else ""}

    def preamble(self) -> List[bytes]:
        return [
            event({"type": "message_start", "message": self._message([], None, 1)}),
            event({"type": "content_block_start", "index": 0, "content_block": self._block(False)}),
            PING,
        ]

    def step(self, i: int) -> List[bytes]:
        if self.tool_args:
            delta = {"type": "input_json_delta", "partial_json": self.tool_args[i]}
        else:
            delta = {"type": "text_delta", "text": self.pieces[i]}
        return [event({"type": "content_block_delta", "index": 0, "delta": delta})]

    def finish(self, reason: str) -> List[bytes]:
        """``reason`` is the fault plan's neutral one (stop, length, content_filter, tool_calls)."""
        usage = {"input_tokens": self.input_tokens, "cache_creation_input_tokens": self.cache_creation,
                 "cache_read_input_tokens": self.cache_read, "output_tokens": self.n_steps}
        return [
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "message_delta", "delta": {"stop_reason": STOP_REASONS.get(reason, reason),
                                                      "stop_sequence": None}, "usage": usage}),
            event({"type": "message_stop"}),
        ]

    def error_event(self, message: str) -> bytes:
        """The mid-stream failure: ``event: error`` with the API's own message for its type."""
        return event(error_envelope(self.error_type, ERROR_TYPES.get(self.error_type, message), self.request_id))

    def failed(self, message: str) -> List[bytes]:  # pragma: no cover - the plan rejects response_failed here
        raise ValueError("response_failed does not apply to /v1/messages")

    def whole(self, reason: str) -> Dict[str, Any]:
        """The non-streaming reply."""
        return self._message([self._block(True)], STOP_REASONS.get(reason, reason), self.n_steps)


# --------------------------------------------------------------------------- the API for the fault server


def _prefill_text(body: Mapping[str, Any]) -> str:
    """The assistant prefill (the last message, when it is the assistant's), else ""."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        if messages[-1].get("role") == "assistant":
            return _content_text(messages[-1].get("content"))
    return ""


def _prompt(body: Mapping[str, Any], chunks: int) -> Tuple[str, str]:
    """The prompt text the answer is derived from, and a prefill that is a prefix of it ("continue")."""
    text = _first_user_text(body.get("messages")) or _content_text(body.get("system"))
    prefix = _prefill_text(body)
    return text, prefix if _remaining_pieces(answer_for(text, chunks), prefix) is not None else ""


def messages_request_info(path: str, body: Mapping[str, Any], chunks: int) -> RequestInfo:
    text, partial = _prompt(body, chunks)
    return RequestInfo(path=path, body=body, prompt_text=text, stream=bool(body.get("stream")),
                       model=str(body.get("model") or "fault-server-model"), n=1, include_usage=False,
                       partial=partial)


def messages_prompt_key(path: str, body: Optional[Mapping[str, Any]], chunks: int) -> str:
    """``first=K`` counter key: a "continue" (prefilled) request is the same prompt as the one it continues."""
    body = body or {}
    messages: Any = body.get("messages")
    if _prompt(body, chunks)[1]:
        messages = messages[:-1]
    return path + "\x00" + json.dumps({"system": body.get("system"), "messages": messages}, sort_keys=True, default=str)


def _builder(info: RequestInfo, ids: _Ids, st: FaultSettings, pieces: Sequence[str]) -> MessagesEvents:
    tool_args = _tool_arguments(info.prompt_text, st.chunks) if st.name == "tool_calls" else []
    return MessagesEvents(
        "msg_" + ids.token, info.model, pieces, _usage_numbers(info, pieces)[0], tool_args,
        tool_name=_tool_name(info.body), tool_id="toolu_" + ids.token[:24],
        cache_read=int(st.fault.get("cache_read") or 0), cache_creation=int(st.fault.get("cache_creation") or 0),
        error_type=st.fault.get("type") or "overloaded_error", request_id="req_" + ids.token,
    )


def anthropic_error(status: int, message: Optional[str] = None, code: Optional[str] = None) -> Dict[str, Any]:
    return error_envelope(http_error_type(status), message, "req_faultsrv")


def _http_error(st: FaultSettings, status: int) -> PlainResponse:
    return PlainResponse(status, anthropic_error(status), _retry_headers(st, status))


def _stream_error_reply() -> PlainResponse:
    return PlainResponse(500, anthropic_error(500, "Injected stream error."))


def _check(info: RequestInfo, st: FaultSettings) -> None:
    if st.name in ("response_failed", "prompt_blocked"):
        raise FaultSpecError(f"fault {st.name} does not apply to {info.path}")
    if _prefill_text(info.body)[-1:].isspace():
        # The real API refuses a prefill that ends in whitespace (HTTP 400).
        raise FaultSpecError("messages: final assistant content cannot end with trailing whitespace")


ANTHROPIC = Api("anthropic", messages_request_info, messages_prompt_key, _builder, _http_error, _stream_error_reply,
                _check, error=anthropic_error, headers=(("anthropic-organization-id", "org-faultsrv"),),
                request_id_header="request-id")
ANTHROPIC_ROUTES: Tuple[Route, ...] = ((MESSAGES_PATH, ANTHROPIC),)
