"""Read the facts we need out of the ``anthropic`` SDK's raw stream events.

Pure: a chunk reader for :class:`~llm_stream_otel.monitor.StreamMonitor` and
the test that tells service notifications from generated packets. The events
are the SDK's ``RawMessageStreamEvent`` models (the same fields on 1.x and
2.x, beta or not); plain attribute access, one ``type`` dispatch per event.

- ``message_start``: the response id and model, the input usage;
- ``content_block_delta`` (text, thinking, tool input): the generated packets;
  time to first chunk counts to the first of them, not to ``message_start``;
- ``message_delta``: the stop reason, announced ahead of the terminator, and
  the usage so far (cumulative: it replaces, never adds);
- ``message_stop``: the terminator. A stream whose body ends before it is
  truncated (``missing_terminator``), whatever ``message_delta`` said.

The ``error`` event never reaches us: the SDK raises it (``APIStatusError``
with ``status_code=200``), which the provider reads as ``error_event``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ... import semconv as t
from ...stream.monitor import StreamMonitor

__all__ = ["FINISH_OUTCOMES", "read_message_event", "read_message_usage", "is_message_notice", "is_error_event",
           "reader_for", "notice_test_for"]

# stop_reason -> outcome; anything else (a newer reason) is completed.
FINISH_OUTCOMES: Mapping[str, str] = {
    "end_turn": t.OUTCOME_COMPLETED,
    "stop_sequence": t.OUTCOME_COMPLETED,
    "tool_use": t.OUTCOME_COMPLETED,
    "pause_turn": t.OUTCOME_COMPLETED,
    "max_tokens": t.OUTCOME_LENGTH,
    "model_context_window_exceeded": t.OUTCOME_LENGTH,
    "refusal": t.OUTCOME_CONTENT_FILTER,
}

_DELTA = "content_block_delta"


def is_message_notice(event: Any) -> bool:
    """Everything before the first ``content_block_delta`` is a service notification."""
    return getattr(event, "type", None) != _DELTA


def read_message_event(monitor: StreamMonitor, event: Any) -> None:
    """The chunk reader for Messages API streams."""
    kind = event.type
    if kind == _DELTA:
        if monitor.content is not None:
            text = getattr(event.delta, "text", None)
            if isinstance(text, str):
                monitor.add_content(text)
        return
    if kind == "message_start":
        message = event.message
        monitor.response_id = getattr(message, "id", None) or monitor.response_id
        monitor.response_model = getattr(message, "model", None) or monitor.response_model
        # Its output_tokens is a placeholder (1) until message_delta: the input only.
        read_message_usage(monitor, getattr(message, "usage", None), output=False)
    elif kind == "message_delta":
        stop_reason = getattr(event.delta, "stop_reason", None)
        if stop_reason:
            monitor.announced_finish = stop_reason
        read_message_usage(monitor, getattr(event, "usage", None))
    elif kind == "message_stop":
        announced = monitor.announced_finish
        if announced:
            monitor.finish(0, announced)
        else:
            # The terminator without a stop reason: complete, the reason missing
            # (as a `[DONE]` without finish_reason on OpenAI streams).
            monitor.done_seen = True


def is_error_event(exc: BaseException) -> bool:
    """The SDK raises an ``event: error`` as a status error with the stream's own status, 200."""
    return getattr(exc, "status_code", None) == 200


def _count(usage: Any, name: str) -> Optional[int]:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_message_usage(monitor: StreamMonitor, usage: Any, output: bool = True) -> None:
    """Usage of ``message_start`` / ``message_delta``: each field present replaces the last one.

    Both carry cumulative counts, so replacing is what never double counts.
    The API's ``input_tokens`` excludes the cache; the monitor's is the total
    (semconv: input tokens include cached ones), with the cache parts apart.
    """
    if usage is None:
        return
    read_before = monitor.cache_read_tokens or 0
    created_before = monitor.cache_creation_tokens or 0
    uncached = _count(usage, "input_tokens")
    if uncached is None and monitor.input_tokens is not None:
        uncached = monitor.input_tokens - read_before - created_before
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_creation = _count(usage, "cache_creation_input_tokens")
    if cache_read is not None:
        monitor.cache_read_tokens = cache_read
    if cache_creation is not None:
        monitor.cache_creation_tokens = cache_creation
    if uncached is not None:
        monitor.input_tokens = uncached + (monitor.cache_read_tokens or 0) + (monitor.cache_creation_tokens or 0)
    output_tokens = _count(usage, "output_tokens") if output else None
    if output_tokens is not None:
        monitor.output_tokens = output_tokens


def reader_for(kind: str) -> Any:
    """One API shape: every kind reads Messages events."""
    return read_message_event


def notice_test_for(kind: str) -> Any:
    return is_message_notice
