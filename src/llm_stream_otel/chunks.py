"""Read the facts we need out of each API's chunk objects.

One small reader per API shape, picked once per stream, so the hot path
does no type dispatch. Readers use plain attribute access: the SDK's
pydantic models in every supported major expose these fields.
"""

from __future__ import annotations

from typing import Any

from .monitor import ChunkReader, StreamMonitor

_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def read_choices_chunk(monitor: StreamMonitor, chunk: Any) -> None:
    """Chat completions and legacy completions: ``choices[].finish_reason`` + usage."""
    choices = chunk.choices
    if choices:
        for choice in choices:
            # Some OpenAI-compatible servers omit the index of a single choice.
            index = getattr(choice, "index", None) or 0
            finish_reason = choice.finish_reason
            if finish_reason is not None:
                monitor.finish(index, finish_reason)
            elif index > monitor.max_choice:
                monitor.saw_choice(index)
            if monitor.content is not None:
                _capture_choice_text(monitor, choice)
    try:
        usage = chunk.usage  # a plain read: getattr() with a default costs more, per chunk
    except AttributeError:  # chunk types of SDKs older than the usage chunk
        usage = None
    if usage is not None:
        monitor.input_tokens = getattr(usage, "prompt_tokens", None)
        monitor.output_tokens = getattr(usage, "completion_tokens", None)
    if monitor.response_id is None:
        monitor.response_id = getattr(chunk, "id", None)
        monitor.response_model = getattr(chunk, "model", None)


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


def reader_for(operation_kind: str) -> ChunkReader:
    """The chunk reader for an instrumented method kind."""
    return read_response_event if operation_kind == "responses" else read_choices_chunk
