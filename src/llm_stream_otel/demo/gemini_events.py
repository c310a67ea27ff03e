"""The Gemini API for the fault server: ``models/{model}:streamGenerateContent``.

What the Gemini Developer API (``/v1beta/models/...``, ``/v1/models/...``) and
Vertex AI (``/v1beta1/projects/{p}/locations/{l}/publishers/google/models/...``)
send for ``?alt=sse``, byte for byte where it matters to a client: one
``data: {GenerateContentResponse}`` event per chunk, separated by CRLF CRLF,
no ``[DONE]``. The finish reason on the last chunk IS the terminator, so a
body that ends without one (``missing_terminator``) looks complete to the
transport. Every chunk carries the running ``usageMetadata``, the
``modelVersion`` and the ``responseId`` (Vertex adds ``createTime`` and a
``trafficType``).

Fault mapping (same specs as the OpenAI endpoints): ``length`` ends with
``MAX_TOKENS``, ``content_filter`` with ``SAFETY`` (no content, blocked
safety ratings), ``tool_calls`` streams one ``functionCall`` part, and
``error_event`` sends the error object Google's frontend puts in a broken
stream (``{"error": {"code": 500, "status": "INTERNAL"}}``, which the SDK
raises as ``ServerError``). ``prompt_blocked`` (Gemini only) answers with a
single ``promptFeedback.blockReason`` chunk and no candidates. HTTP faults
carry Google's error envelope (``RESOURCE_EXHAUSTED``, ``INTERNAL``,
``UNAVAILABLE``). ``candidateCount`` is not honoured (one candidate).
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .fault_plan import (
    Api,
    FaultSettings,
    FaultSpecError,
    PlainResponse,
    RequestInfo,
    Route,
    _Ids,
    answer_for,
)

__all__ = ["GEMINI", "GEMINI_ROUTES", "GeminiEvents", "gemini_request_info", "gemini_prompt_key", "is_vertex_path"]

# /v1/models/m:..., /v1beta/models/m:..., /v1beta1/publishers/google/models/m:...,
# /v1beta1/projects/p/locations/l/publishers/google/models/m:...
_PATH = re.compile(
    r"/(?P<version>v\d+(?:alpha|beta)?\d*)/"
    r"(?:projects/[^/]+/locations/[^/]+/)?(?P<publisher>publishers/[^/]+/)?"
    r"models/(?P<model>[^/:]+):(?P<method>streamGenerateContent|generateContent)"
)
_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
_HTTP_STATUS = {
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota). (injected by fault server)"),
    500: ("INTERNAL", "An internal error has occurred. Please retry. (injected by fault server)"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later. (injected by fault server)"),
}
_BLOCKED_RATINGS = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
]


def is_vertex_path(path: str) -> bool:
    """Vertex AI paths name the publisher (``publishers/google/models/...``)."""
    match = _PATH.fullmatch(path)
    return bool(match and match.group("publisher"))


def _user_text(contents: Any) -> str:
    """Text of the first user turn (``contents`` may also be a bare string or one content)."""
    if isinstance(contents, str):
        return contents
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list):
        return ""
    for content in contents:
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts") or []
            return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def gemini_request_info(path: str, body: Mapping[str, Any], chunks: int) -> RequestInfo:
    """Model and method come from the path; the prompt from ``contents``; usage is always sent."""
    match = _PATH.fullmatch(path)
    model = match.group("model") if match else "fault-server-model"
    return RequestInfo(
        path=path,
        body=body,
        prompt_text=_user_text(body.get("contents")),
        stream=bool(match and match.group("method") == "streamGenerateContent"),
        model=model,
        n=1,
        include_usage=True,
    )


def gemini_prompt_key(path: str, body: Optional[Mapping[str, Any]], chunks: int) -> str:
    """``first=K`` counter key: the path (it holds the model) + the canonical JSON of ``contents``."""
    contents = (body or {}).get("contents")
    return path + "\x00" + json.dumps(contents, sort_keys=True, default=str)


def _encode(data: Mapping[str, Any]) -> bytes:
    """One SSE event as Google's frontend writes it: ``": "`` after keys, CRLF CRLF after the event."""
    return b"data: " + json.dumps(data, separators=(",", ": "), ensure_ascii=False).encode("utf-8") + b"\r\n\r\n"


def _function_name(body: Mapping[str, Any]) -> str:
    for tool in body.get("tools") or []:
        for decl in (tool.get("functionDeclarations") or []) if isinstance(tool, dict) else []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                return decl["name"]
    return "lookup"


class GeminiEvents:
    """Builds ``GenerateContentResponse`` chunks; the interface of ``fault_plan._ChatLike``."""

    def __init__(self, info: RequestInfo, ids: _Ids, st: FaultSettings, pieces: Sequence[str]) -> None:
        self.info, self.ids, self.st, self.pieces = info, ids, st, list(pieces)
        self.vertex = is_vertex_path(info.path)
        self.blocked = st.name == "prompt_blocked"
        self.call = st.name == "tool_calls"
        self.prompt_tokens = max(1, len(info.prompt_text.split()))
        self.thoughts_tokens = 2 * self.prompt_tokens  # thinking models report them on every chunk
        self.response_id = base64.urlsafe_b64encode(bytes.fromhex(ids.token[:32].ljust(32, "0"))).decode()[:22]

    @property
    def n_steps(self) -> int:
        if self.blocked:
            return 0
        return 1 if self.call else len(self.pieces)

    def preamble(self) -> List[bytes]:
        return []

    def _usage(self, candidates: Optional[int]) -> Dict[str, Any]:
        usage: Dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        total = self.prompt_tokens
        if candidates is not None:
            usage["candidatesTokenCount"] = candidates
            usage["thoughtsTokenCount"] = self.thoughts_tokens
            total += candidates + self.thoughts_tokens
        usage["totalTokenCount"] = total
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt_tokens}]
        if self.vertex:
            usage["trafficType"] = "ON_DEMAND"
        return usage

    def _response(self, candidates: Optional[List[Dict[str, Any]]], usage: Dict[str, Any],
                  **extra: Any) -> Dict[str, Any]:
        resp: Dict[str, Any] = {}
        if candidates is not None:
            resp["candidates"] = candidates
        resp.update(extra)
        resp["usageMetadata"] = usage
        resp["modelVersion"] = self.info.model
        if self.vertex:
            resp["createTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(self.ids.created))
        resp["responseId"] = self.response_id
        return resp

    def _parts(self, i: int) -> List[Dict[str, Any]]:
        if self.call:
            query = "".join(answer_for(self.info.prompt_text, self.st.chunks)).strip()
            return [{"functionCall": {"name": _function_name(self.info.body), "args": {"query": query}}}]
        return [{"text": self.pieces[i]}]

    def _produced(self, upto: int) -> int:
        """Output tokens after ``upto`` steps (one per piece; a function call counts its pieces)."""
        return self.st.chunks if self.call and upto else upto

    def step(self, i: int) -> List[bytes]:
        candidate = {"content": {"parts": self._parts(i), "role": "model"}, "index": 0}
        return [_encode(self._response([candidate], self._usage(self._produced(i + 1))))]

    def _final_candidate(self, reason: str) -> Dict[str, Any]:
        finish = _FINISH.get(reason, "STOP")
        if finish == "SAFETY":
            return {"finishReason": finish, "index": 0, "safetyRatings": _BLOCKED_RATINGS}
        return {"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": finish, "index": 0}

    def finish(self, reason: str) -> List[bytes]:
        if self.blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATINGS}
            return [_encode(self._response(None, self._usage(None), promptFeedback=feedback))]
        produced = self._produced(self.n_steps)
        return [_encode(self._response([self._final_candidate(reason)], self._usage(produced)))]

    def error_event(self, message: str) -> bytes:
        return _encode({"error": {"code": 500, "message": message, "status": "INTERNAL"}})

    def failed(self, message: str) -> List[bytes]:  # pragma: no cover - rejected in _check
        raise FaultSpecError("response_failed only applies to /v1/responses")

    def whole(self, reason: str) -> Dict[str, Any]:
        """The ``:generateContent`` (non-streaming) body."""
        if self.blocked:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _BLOCKED_RATINGS}
            return self._response(None, self._usage(None), promptFeedback=feedback)
        candidate = self._final_candidate(reason)
        if "content" in candidate:
            parts = self._parts(0) if self.call else [{"text": "".join(self.pieces)}]
            candidate["content"] = {"parts": parts, "role": "model"}
        return self._response([candidate], self._usage(self._produced(self.n_steps)))


def google_error(status: int, message: str) -> Dict[str, Any]:
    """Google's error envelope (``google.rpc.Status`` as JSON)."""
    return {"error": {"code": status, "message": message, "status": _HTTP_STATUS.get(status, ("UNKNOWN", ""))[0]}}


def _http_error(st: FaultSettings, status: int) -> PlainResponse:
    """An injected 429/500/503: Google sends no retry hints in headers (the SDK's backoff decides)."""
    return PlainResponse(status, google_error(status, _HTTP_STATUS[status][1]))


def _stream_error_reply() -> PlainResponse:
    return PlainResponse(500, google_error(500, "Injected stream error."))


def _check(info: RequestInfo, st: FaultSettings) -> None:
    if st.name == "response_failed":
        raise FaultSpecError("fault response_failed only applies to /v1/responses")
    if st.name == "overloaded":
        raise FaultSpecError("fault overloaded (HTTP 529) only applies to the Anthropic API")


GEMINI = Api("gemini", gemini_request_info, gemini_prompt_key, GeminiEvents, _http_error, _stream_error_reply, _check)
GEMINI_ROUTES: Tuple[Route, ...] = ((_PATH, GEMINI),)
