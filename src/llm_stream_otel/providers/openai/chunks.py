"""Read the facts we need out of each API's chunk objects.

One small reader per API shape, picked once per stream, so the hot path
does no type dispatch. Readers use plain attribute access: the SDK's
pydantic models in every supported major expose these fields. The chat
reader, which runs for every chunk, reads the fields out of the instance
``__dict__`` where they are there (pydantic v1 and v2 keep a model's fields
there): an attribute read on a pydantic model costs about 400 instructions,
because ``BaseModel`` defines ``__getattr__`` and CPython cannot specialise
the lookup; a dict lookup costs a tenth of that. Any other object, or a
field that is not in the ``__dict__`` (an extra field, an omitted one), is
read by attribute as before.
"""

from __future__ import annotations

from typing import Any, Optional

from ...stream.monitor import ChunkReader, NoticeTest, StreamMonitor

_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def read_choices_chunk(monitor: StreamMonitor, chunk: Any) -> None:
    """Chat completions and legacy completions: ``choices[].finish_reason``, usage, and the ids.

    Reads each chunk until the response id and model are both in, then hands
    the monitor ``read_choices``, which reads no ids: Azure's first chunk
    (prompt filter results) has "id": "" and "model": "", so each is taken
    from its first non-empty value, and once both are there the check would
    only cost every later chunk."""
    read_choices(monitor, chunk)
    if monitor.response_model is None or monitor.response_id is None:
        _read_ids(monitor, chunk)
        if monitor.response_model is None or monitor.response_id is None:
            return
    monitor.reader = read_choices


def read_choices(monitor: StreamMonitor, chunk: Any) -> None:
    """``choices[].finish_reason`` + usage (the per-chunk part of ``read_choices_chunk``)."""
    try:
        fields = chunk.__dict__
        choices = fields["choices"]
        usage = fields["usage"]
    except (AttributeError, KeyError):  # not a fields-in-__dict__ object, or no usage field (old SDKs)
        choices = chunk.choices
        usage = getattr(chunk, "usage", None)
    if choices:
        for choice in choices:
            try:
                values = choice.__dict__
                index = values["index"]
                finish_reason = values["finish_reason"]
            except (AttributeError, KeyError):
                # Some OpenAI-compatible servers omit the index of a single choice.
                index = getattr(choice, "index", None)
                finish_reason = choice.finish_reason
            if finish_reason is not None:
                monitor.finish(index or 0, finish_reason)
                if monitor.input_tokens is None:
                    read_provider_usage(monitor, chunk)
            elif index and index > monitor.max_choice:  # choice 0 (or none given) needs no note
                monitor.saw_choice(index)
            if monitor.content is not None:
                _capture_choice_text(monitor, choice)
    if usage is not None:
        read_usage(monitor, usage)


def _read_ids(monitor: StreamMonitor, chunk: Any) -> None:
    if monitor.response_id is None:
        monitor.response_id = getattr(chunk, "id", None) or None
    if monitor.response_model is None:
        monitor.response_model = getattr(chunk, "model", None) or None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def read_usage(monitor: StreamMonitor, usage: Any) -> None:
    """Chat/completions usage (``prompt_tokens`` / ``completion_tokens``), an object or a plain dict."""
    monitor.input_tokens = _field(usage, "prompt_tokens")
    monitor.output_tokens = _field(usage, "completion_tokens")


def _extra(chunk: Any, name: str) -> Any:
    extra = getattr(chunk, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        return extra.get(name)
    return getattr(chunk, name, None)  # pydantic v1 keeps extra fields as attributes


def read_provider_usage(monitor: StreamMonitor, chunk: Any) -> None:
    """Usage in documented provider-specific places, read only once a choice finishes.

    Groq: ``x_groq.usage`` on the chunk that carries the finish reason (the
    only usage some Groq streams send).
    """
    groq = _extra(chunk, "x_groq")
    usage = _field(groq, "usage") if groq is not None else None
    if usage is not None:
        read_usage(monitor, usage)


def read_error_object_usage(monitor: StreamMonitor, data: Any) -> None:
    """OpenRouter: an error object after the finish (e.g. ``length``) carries the usage at its top level."""
    if isinstance(data, dict) and data.get("error") and isinstance(data.get("usage"), dict):
        read_usage(monitor, data["usage"])


def _capture_choice_text(monitor: StreamMonitor, choice: Any) -> None:
    delta = getattr(choice, "delta", None)
    text = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
    if isinstance(text, str):
        monitor.add_content(text)


def read_response_event(monitor: StreamMonitor, event: Any) -> None:
    """Responses API: terminal events carry the outcome and the usage."""
    kind = getattr(event, "type", None)
    if kind == "response.output_text.delta":
        if monitor.content is not None:
            monitor.add_content(getattr(event, "delta", "") or "")
        return
    if kind in ("response.created", "response.in_progress"):
        _read_response(monitor, getattr(event, "response", None))
    elif kind == "response.completed":
        _read_response(monitor, getattr(event, "response", None))
        monitor.finish(0, "stop")
    elif kind == "response.incomplete":
        response = getattr(event, "response", None)
        _read_response(monitor, response)
        details = getattr(response, "incomplete_details", None)
        reason = getattr(details, "reason", None)
        monitor.finish(0, _INCOMPLETE_REASONS.get(reason, reason or "length"))
    elif kind in ("response.failed", "error"):
        _read_response(monitor, getattr(event, "response", None))
        monitor.error_event = True


def _read_response(monitor: StreamMonitor, response: Any) -> None:
    if response is None:
        return
    monitor.response_id = getattr(response, "id", None) or monitor.response_id
    monitor.response_model = getattr(response, "model", None) or monitor.response_model
    usage = getattr(response, "usage", None)
    if usage is not None:
        monitor.input_tokens = getattr(usage, "input_tokens", None)
        monitor.output_tokens = getattr(usage, "output_tokens", None)


def is_response_notice(event: Any) -> bool:
    """Responses: every event before the first ``response.*.delta`` (``response.created``,
    ``response.in_progress``, ``response.output_item.added``, ...) is a service notification."""
    kind = getattr(event, "type", None)
    return not (isinstance(kind, str) and kind.endswith(".delta"))


def reader_for(operation_kind: str) -> ChunkReader:
    """The chunk reader for an instrumented method kind."""
    return read_response_event if operation_kind == "responses" else read_choices_chunk


def notice_test_for(operation_kind: str) -> Optional[NoticeTest]:
    """Which leading chunks are service notifications, not chunks (None: every chunk counts)."""
    return is_response_notice if operation_kind == "responses" else None
