"""Opt-in token usage for streams whose app did not ask for it.

With ``OTEL_INSTRUMENTATION_LLM_STREAM_INCLUDE_USAGE=true`` a chat or legacy
completions request without ``stream_options.include_usage`` is sent with
it (the Responses API always sends usage). The server then answers two
things the app did not ask for, and both are undone before the app reads:

- a final usage-only chunk (``choices == []``, ``usage`` set): its usage goes
  to the monitor and the chunk is not passed on (nor counted as a chunk,
  so the span's chunk count is what the app read);
- ``"usage": null`` on every other chunk, which pydantic counts as a field
  that was set: it is removed from the chunk's fields-set again, so that
  ``to_dict()`` / ``model_dump(exclude_unset=True)`` / ``==`` read exactly as
  without the option.

Only streams whose request we rewrote are read through ``HidingSource``;
every other stream keeps the plain hot path.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from .chunks import read_usage
from ...stream.monitor import StreamMonitor

KINDS = frozenset({"chat", "completions"})


def _absent(value: Any) -> bool:
    """``None`` or the SDK's ``NOT_GIVEN`` / ``omit`` sentinels (not a mapping, falsy)."""
    return value is None or (not isinstance(value, Mapping) and not value)


def with_usage_requested(kind: str, kwargs: Mapping[str, Any]) -> Optional[dict]:
    """The request's keyword arguments with ``include_usage`` added, or None to send it as it is.

    None when the app already chose (``True`` or an explicit ``False``), or
    passed ``stream_options`` of a shape we do not know.
    """
    if kind not in KINDS:
        return None
    options = kwargs.get("stream_options")
    if _absent(options):
        merged: dict = {"include_usage": True}
    elif isinstance(options, Mapping) and "include_usage" not in options:
        merged = {**options, "include_usage": True}
    else:
        return None
    return {**kwargs, "stream_options": merged}


def shown(chunk: Any, monitor: StreamMonitor) -> bool:
    """Is ``chunk`` one the app would have read without the option? (fixes its fields-set if so)"""
    try:
        usage = chunk.usage
        if usage is not None:
            if chunk.choices == []:
                read_usage(monitor, usage)
                return False
            return True
        try:
            chunk.__pydantic_fields_set__.discard("usage")  # pydantic v2
        except AttributeError:
            chunk.__fields_set__.discard("usage")  # pydantic v1 models (openai 1.x under pydantic 1)
    except Exception:  # noqa: BLE001 - not a chunk object of a known shape: pass it on untouched
        pass
    return True


class HidingSource:
    """What the proxy iterates instead of the SDK stream when we asked for usage."""

    __slots__ = ("_stream", "_monitor")

    def __init__(self, stream: Any, monitor: StreamMonitor) -> None:
        self._stream = stream
        self._monitor = monitor

    @property
    def response(self) -> Any:  # read by proxy._closed_by_app
        return self._stream.response

    def __iter__(self) -> "HidingSource":
        return self

    def __next__(self) -> Any:
        stream, monitor = self._stream, self._monitor
        while True:
            chunk = stream.__next__()
            if shown(chunk, monitor):
                return chunk

    def __aiter__(self) -> "HidingSource":
        return self

    async def __anext__(self) -> Any:
        stream, monitor = self._stream, self._monitor
        while True:
            chunk = await stream.__anext__()
            if shown(chunk, monitor):
                return chunk
