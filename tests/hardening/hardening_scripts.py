"""Random stream scripts for the fault server's ``X-Script`` mode, and their oracle.

A :class:`Scenario` is what the server will send (raw SSE ``data`` payloads of
random shapes) plus one transport fault at one point. :func:`expected` says,
from the script alone and whether the SDK raised, what our span must report;
it re-implements the documented outcome rules (design.md) independently of
``monitor.py`` so that a bug there shows up as a disagreement.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hypothesis import strategies as st

from llm_stream_otel import semconv as t
from tests.support.scripted import encode_script

CREATED = 1_700_000_000
TRANSPORT_FAULTS = ("reset_between", "reset_mid_chunk", "cut_mid_chunk")
CUT_FAULTS = TRANSPORT_FAULTS + ("missing_terminator", "error_event")
STREAM_FAULTS = ("none", "stall") + CUT_FAULTS
HTTP_FAULTS = ("http_500", "http_429")
STALL_SECONDS = 0.3
STALL_THRESHOLD = 0.15

# design.md: finish reason -> outcome; anything unknown counts as completed.
_FINISH_OUTCOME = {
    "stop": t.OUTCOME_COMPLETED,
    "tool_calls": t.OUTCOME_COMPLETED,
    "length": t.OUTCOME_LENGTH,
    "content_filter": t.OUTCOME_CONTENT_FILTER,
}
_SEVERITY = {t.OUTCOME_COMPLETED: 0, t.OUTCOME_LENGTH: 1, t.OUTCOME_CONTENT_FILTER: 2}
_FAULT_REASON = {
    "reset_between": t.REASON_CONNECTION_RESET,
    "reset_mid_chunk": t.REASON_CONNECTION_RESET,
    "cut_mid_chunk": t.REASON_INCOMPLETE_READ,
    "error_event": t.REASON_ERROR_EVENT,
}


@dataclass
class Scenario:
    endpoint: str  # chat | completions | responses
    events: List[str]
    fault: str = "none"
    at: Optional[int] = None
    n: int = 1
    seconds: float = STALL_SECONDS

    def header(self) -> str:
        return encode_script(self.events, self.fault, self.at, seconds=self.seconds)

    def kwargs(self, prompt: str = "scripted prompt", **extra: Any) -> Dict[str, Any]:
        headers = {"X-Script": self.header()}
        headers.update(extra.pop("extra_headers", {}))
        common: Dict[str, Any] = dict(model="gpt-script", stream=True, extra_headers=headers, **extra)
        if self.endpoint == "chat":
            return dict(messages=[{"role": "user", "content": prompt}], n=self.n, **common)
        if self.endpoint == "completions":
            return dict(prompt=prompt, n=self.n, **common)
        return dict(input=prompt, **common)

    @property
    def position(self) -> int:
        return len(self.events) if self.at is None else max(0, min(self.at, len(self.events)))

    def delivered(self) -> List[str]:
        """The complete events that reach the client."""
        if self.fault in HTTP_FAULTS:
            return []
        if self.fault in ("none", "stall"):
            return list(self.events)
        out = list(self.events[: self.position])
        if self.fault == "error_event":
            out.append(json.dumps({"error": {"message": "Scripted stream error.", "type": "server_error"}}))
        return out


@dataclass
class Expect:
    outcome: str
    reason: Optional[str]
    chunks: int
    stall: bool = False


@dataclass
class _Facts:
    chunks: int = 0
    generated: int = 0  # timed chunks: from the first generated one (Responses: the first *.delta) on
    finished: List[Tuple[int, str]] = field(default_factory=list)
    max_index: int = -1
    error_event: bool = False  # responses: an error / response.failed event
    raised_in_data: bool = False  # an {"error": ...} payload: the SDK raises APIError
    done: bool = False  # the SDK read a [DONE] (issue 12: the stream is complete)

    def terminal(self) -> bool:
        """Every choice seen so far (0 .. highest index) has a finish reason."""
        indices = {i for i, _ in self.finished}
        return bool(indices) and indices >= set(range(self.max_index + 1))

    def terminal_outcome(self) -> str:
        worst = t.OUTCOME_COMPLETED
        for _, reason in self.finished:
            outcome = _FINISH_OUTCOME.get(reason, t.OUTCOME_COMPLETED)
            if _SEVERITY[outcome] > _SEVERITY[worst]:
                worst = outcome
        return worst


def _read(endpoint: str, events: Sequence[str], facts: _Facts) -> bool:
    """Feed events as the SDK would; False once the SDK stops reading ([DONE] or an error)."""
    for data in events:
        if data.startswith("[DONE]"):
            facts.done = True
            return False
        obj = json.loads(data)
        if isinstance(obj, dict) and obj.get("error"):
            facts.raised_in_data = True
            return False
        facts.chunks += 1
        if endpoint != "responses" or facts.generated or (isinstance(obj, dict) and str(obj.get("type")).endswith(".delta")):
            facts.generated += 1
        if not isinstance(obj, dict):
            continue
        if endpoint == "responses":
            kind = obj.get("type")
            if kind == "response.completed":
                facts.finished.append((0, "stop"))
                facts.max_index = max(facts.max_index, 0)
            elif kind == "response.incomplete":
                details = (obj.get("response") or {}).get("incomplete_details") or {}
                why = details.get("reason")
                mapped = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(why, why or "length")
                facts.finished.append((0, mapped))
                facts.max_index = max(facts.max_index, 0)
            elif kind in ("response.failed", "error"):
                facts.error_event = True
            continue
        for choice in obj.get("choices") or []:
            index = choice["index"]
            facts.max_index = max(facts.max_index, index)
            if choice.get("finish_reason") is not None:
                facts.finished.append((index, choice["finish_reason"]))
    return True


def expected(scn: Scenario, raised: Optional[BaseException]) -> Expect:
    """What our span must say, given the script and what the (uninstrumented) SDK raised."""
    if scn.fault in HTTP_FAULTS:
        return Expect(t.OUTCOME_FAILED, None, 0)
    facts = _Facts()
    _read(scn.endpoint, scn.delivered(), facts)
    stall = False
    if scn.fault == "stall":
        before, after = _Facts(), _Facts()
        if _read(scn.endpoint, scn.events[: scn.position], before):
            _read(scn.endpoint, scn.events[scn.position :], after)
        # A gap is only timed after the first generated chunk (a leading notification is not timed).
        stall = before.generated > 0 and after.chunks > 0
    # Issue 12: [DONE] on the wire completes a stream even without finish reasons.
    terminal = facts.terminal() or facts.done
    if raised is not None:
        if terminal and not facts.error_event:
            return Expect(facts.terminal_outcome(), None, facts.chunks, stall)
        if facts.raised_in_data or type(raised).__name__ == "APIError":
            reason = t.REASON_ERROR_EVENT
        else:
            reason = _FAULT_REASON[scn.fault]
        return Expect(t.OUTCOME_TRUNCATED, reason, facts.chunks, stall)
    if facts.error_event:
        return Expect(t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, facts.chunks, stall)
    if terminal:
        return Expect(facts.terminal_outcome(), None, facts.chunks, stall)
    return Expect(t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR, facts.chunks, stall)


def expected_abandon(scn: Scenario, read: int) -> Expect:
    """The app stopped (break / close / with-exit / GC) after ``read`` chunks, before the end."""
    facts = _Facts()
    kept: List[str] = []
    for data in scn.delivered():
        if len(kept) == read:
            break
        kept.append(data)
    _read(scn.endpoint, kept, facts)
    assert facts.chunks == read
    if facts.error_event:
        return Expect(t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT, read)
    if facts.terminal():
        return Expect(facts.terminal_outcome(), None, read)
    return Expect(t.OUTCOME_ABANDONED, None, read)


# --------------------------------------------------------------------------- strategies

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)
_huge = st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "漢", "🙂", "ab\n"]), st.integers(20_000, 200_000))
_unknown_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "ü"]), inner, max_size=3),
    max_leaves=6,
)
_unknown_fields = st.dictionaries(st.sampled_from(["x_extra", "x_meta", "obfuscation", "x_ünï"]), _unknown_value, max_size=2)


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


@st.composite
def choices_scenario(draw: Any, endpoint: str) -> Scenario:
    """Chat or legacy-completions chunks of random shapes, then finish chunks, then a fault."""
    chat = endpoint == "chat"
    n = draw(st.sampled_from([1, 1, 1, 2, 3]))
    rid = ("chatcmpl-" if chat else "cmpl-") + draw(st.sampled_from(["a1", "b2", "ünï"]))
    envelope = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": CREATED, "model": "gpt-script"}

    def choice(index: int, text: Optional[str], finish: Optional[str] = None, shape: str = "text") -> Dict[str, Any]:
        if not chat:
            c: Dict[str, Any] = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        elif shape == "null_delta":
            c = {"index": index, "delta": None, "logprobs": None, "finish_reason": finish}
        elif shape == "role":
            c = {"index": index, "delta": {"role": "assistant", "content": "", "refusal": None},
                 "logprobs": None, "finish_reason": finish}
        elif shape == "tool":
            call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": text}}
            c = {"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": finish}
        else:
            c = {"index": index, "delta": {} if text is None else {"content": text}, "logprobs": None,
                 "finish_reason": finish}
        if draw(st.integers(0, 9)) == 0:
            c.update(draw(_unknown_fields))
        return c

    def chunk(**fields: Any) -> str:
        obj = dict(envelope)
        obj.update(fields)
        if draw(st.integers(0, 5)) == 0:
            obj.update(draw(_unknown_fields))
        return _dump(obj)

    events: List[str] = []
    for _ in range(draw(st.integers(0, 7))):
        shape = draw(st.sampled_from(
            ["text", "text", "text", "multi", "null_delta", "role", "tool", "no_choices", "empty_choices",
             "null_choices", "usage", "bare", "huge"]))
        if shape in ("text", "null_delta", "role", "tool"):
            events.append(chunk(choices=[choice(draw(st.integers(0, n - 1)), draw(_text), shape=shape)]))
        elif shape == "multi":
            indices = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
            events.append(chunk(choices=[choice(i, draw(_text)) for i in indices]))
        elif shape == "no_choices":
            obj = dict(envelope)
            events.append(_dump(obj))
        elif shape == "empty_choices":
            events.append(chunk(choices=[]))
        elif shape == "null_choices":
            events.append(chunk(choices=None))
        elif shape == "usage":
            events.append(chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}))
        elif shape == "bare":
            events.append("{}")
        else:
            events.append(chunk(choices=[choice(0, draw(_huge))]))

    reasons = ["stop", "stop", "length", "content_filter", "tool_calls", "x_unknown_reason"]
    finishing = draw(st.permutations(list(range(n))))
    if draw(st.integers(0, 7)) == 0:  # a server that never finishes some choices
        finishing = finishing[: draw(st.integers(0, n - 1))]
    if finishing and draw(st.booleans()) and n > 1:
        events.append(chunk(choices=[choice(i, None, draw(st.sampled_from(reasons))) for i in finishing]))
    else:
        for i in finishing:
            events.append(chunk(choices=[choice(i, draw(st.none() | _text), draw(st.sampled_from(reasons)))]))
    if draw(st.booleans()):
        events.append(chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}))
    if draw(st.integers(0, 4)) > 0:
        events.append("[DONE]")
    return _with_fault(draw, Scenario(endpoint, events, n=n))


@st.composite
def responses_scenario(draw: Any) -> Scenario:
    """Responses API events: known, unknown and type-less events, one terminal event (or none)."""
    seq = iter(range(10_000))
    rid = "resp_" + draw(st.sampled_from(["a1", "b2"]))

    def response(status: str, **extra: Any) -> Dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": CREATED, "model": "gpt-script", "status": status,
                "output": [], **extra}

    def event(kind: Optional[str], **fields: Any) -> str:
        obj: Dict[str, Any] = {"sequence_number": next(seq), **fields}
        if kind is not None:
            obj["type"] = kind
        if draw(st.integers(0, 5)) == 0:
            obj.update(draw(_unknown_fields))
        return _dump(obj)

    events = []
    if draw(st.integers(0, 4)) > 0:
        events.append(event("response.created", response=response("in_progress")))
    for _ in range(draw(st.integers(0, 6))):
        shape = draw(st.sampled_from(["delta", "delta", "delta", "unknown", "typeless", "huge", "in_progress"]))
        if shape == "delta":
            events.append(event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                                delta=draw(_text)))
        elif shape == "huge":
            events.append(event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                                delta=draw(_huge)))
        elif shape == "unknown":
            events.append(event("response.x_future_event", payload=draw(_unknown_value)))
        elif shape == "typeless":
            events.append(event(None, payload=draw(_unknown_value)))
        else:
            events.append(event("response.in_progress", response=response("in_progress")))
    usage = {"input_tokens": 3, "output_tokens": 9, "total_tokens": 12}
    terminal = draw(st.sampled_from(["completed", "completed", "incomplete", "failed", "error", "none"]))
    if terminal == "completed":
        events.append(event("response.completed", response=response("completed", usage=usage)))
    elif terminal == "incomplete":
        why = draw(st.sampled_from(["max_output_tokens", "content_filter", None]))
        events.append(event("response.incomplete", response=response(
            "incomplete", usage=usage, incomplete_details=None if why is None else {"reason": why})))
    elif terminal == "failed":
        events.append(event("response.failed", response=response(
            "failed", error={"code": "server_error", "message": "scripted failure"})))
    elif terminal == "error":
        events.append(event("error", code="server_error", message="scripted error event", param=None))
    if draw(st.integers(0, 4)) == 0:
        events.append("[DONE]")
    return _with_fault(draw, Scenario("responses", events))


def _with_fault(draw: Any, scn: Scenario) -> Scenario:
    fault = draw(st.sampled_from(STREAM_FAULTS + STREAM_FAULTS[2:] + HTTP_FAULTS))
    scn.fault = fault
    scn.at = draw(st.integers(0, len(scn.events))) if fault not in ("none",) + HTTP_FAULTS else None
    return scn


def scenarios(endpoint: Optional[str] = None) -> Any:
    if endpoint == "responses":
        return responses_scenario()
    if endpoint is not None:
        return choices_scenario(endpoint)
    return st.one_of(choices_scenario("chat"), choices_scenario("completions"), responses_scenario())


def without_usage(scn: Scenario) -> Scenario:
    """The scenario as the real API sends it to an app that did not ask for usage:
    no chunk carries usage (the server adds it when asked: ``scripted.as_asked``)."""

    def unasked(event: str) -> bool:
        try:
            obj = json.loads(event)
        except ValueError:
            return True
        return not (isinstance(obj, dict) and obj.get("usage") is not None)

    keep = [unasked(e) if isinstance(e, str) else True for e in scn.events]
    at = None if scn.at is None else sum(keep[: scn.at])
    return replace(scn, events=[e for e, k in zip(scn.events, keep) if k], at=at)


# --------------------------------------------------------------------------- driving the SDK


def create(client: Any, endpoint: str, **kwargs: Any) -> Any:
    if endpoint == "chat":
        return client.chat.completions.create(**kwargs)
    if endpoint == "completions":
        return client.completions.create(**kwargs)
    return client.responses.create(**kwargs)


def consume(client: Any, scn: Scenario, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    """Read a stream to its end or its exception, then close it, as a careful app does.

    The close matters to the suite, not to what is compared: hypothesis keeps
    the exceptions of an example in reference cycles, and with them the
    suspended byte iterators of a stream that failed above the transport (an
    error event). Left open, such a stream is closed by the garbage collector
    whenever it runs, and on httpcore 1.x that close takes the pool's lock,
    which the same thread may be holding in the next request of the shared
    client: a deadlock of httpcore's, with or without instrumentation (it hung
    the CI of stop 21 on openai 1.x; reproduced with its stack). Closed here,
    the later collection finds the pool stream already closed and takes no lock.
    """
    chunks: List[Any] = []
    try:
        with create(client, scn.endpoint, **scn.kwargs(**kw)) as stream:
            for chunk in stream:
                chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


async def aconsume(client: Any, scn: Scenario, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    """``consume`` for an async client (the stream is closed the same way, for the same reason)."""
    chunks: List[Any] = []
    try:
        async with await create(client, scn.endpoint, **scn.kwargs(**kw)) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


class LoopThread:
    """One event loop on a daemon thread, for hypothesis tests that drive async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# --------------------------------------------------------------------------- comparing app views


def exception_view(exc: Optional[BaseException]) -> Any:
    """What an app can observe of an exception: type, message, status, body, cause chain types."""
    if exc is None:
        return None
    chain = []
    seen = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(type(cur))
        cur = cur.__cause__ or cur.__context__
    return (type(exc), str(exc), getattr(exc, "status_code", None), getattr(exc, "body", None), chain)


def assert_same_app_view(plain: Tuple[List[Any], Optional[BaseException]],
                         instrumented: Tuple[List[Any], Optional[BaseException]]) -> None:
    plain_chunks, plain_exc = plain
    chunks, exc = instrumented
    assert [type(c) for c in chunks] == [type(c) for c in plain_chunks]
    assert chunks == plain_chunks  # pydantic equality: fields, extras and fields-set
    assert [c.model_dump(warnings=False) for c in chunks] == [c.model_dump(warnings=False) for c in plain_chunks]
    # What to_dict() / exclude_unset read (recent pydantic's == ignores the fields-set).
    assert [c.model_fields_set for c in chunks] == [c.model_fields_set for c in plain_chunks]
    assert exception_view(exc) == exception_view(plain_exc), (exc, plain_exc)
