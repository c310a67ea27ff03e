"""See the SSE terminator on the wire: was ``data: [DONE]`` the stream's last event?

The SDK swallows ``[DONE]`` (its ``Stream.__stream__`` breaks out of its loop
on it), so the chunks alone cannot tell "the server said it was done" from
"the body just stopped". We hook the SDK's SSE layer once per stream, never
per event:

- ``peek`` (openai 2.x, 3.x): the SDK stops reading at ``[DONE]``, so its
  event generator (``Stream._iter_events()``) stays suspended on the last
  event it produced. We keep a reference to that generator (one instance
  attribute swapped before the first read, removed when the SDK calls it)
  and, once the stream has ended, read the event the innermost decoder frame
  holds. An exhausted generator means the body ended without a ``[DONE]``.
  Zero cost per event.
- ``record`` (openai 1.x): after ``[DONE]`` the SDK drains the rest of the
  body (and any event after ``[DONE]``), so the generator is exhausted either
  way. The events then pass through one small generator that keeps the last
  event and notes a ``[DONE]`` among them. Where the SDK's ``_iter_events``
  only re-yields its SSE decoder's events (1.x: checked once, on its source),
  our generator reads the decoder itself and takes that frame's place: no
  frame more per event than without us, and ``[DONE]`` is read off the
  event's ``_data`` (its ``data`` property returns it) without a call.

Where neither applies (no ``_iter_events``, another wrapper's stream, an
already-started stream), ``watch_stream`` returns None and the outcome falls
back to the finish-reason rule; ``doctor`` reports the strategy in use.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from collections import deque
from typing import Any, AsyncIterator, Dict, Optional

from .chunks import read_error_object_usage

DONE = "[DONE]"
STRATEGY_PEEK = "peek"
STRATEGY_RECORD = "record"

_MAX_DEPTH = 8  # generators delegating to generators: _iter_events -> iter_bytes -> _decode_lines


_classes: tuple = ()  # found once, then reused: an import statement per stream costs more than the rest


def sdk_stream_classes() -> tuple:
    """The SDK's ``Stream`` / ``AsyncStream``, or () if they cannot be found."""
    global _classes
    if _classes:
        return _classes
    try:
        from openai._streaming import AsyncStream, Stream
    except ImportError:
        return ()
    if not (hasattr(Stream, "_iter_events") and hasattr(AsyncStream, "_iter_events")):
        return ()
    _classes = (Stream, AsyncStream)
    return _classes


# Does Stream.__iter__ / AsyncStream.__aiter__ only re-yield ``self._iterator``? Read once.
def _source_matches(function: Any, pattern: "re.Pattern[str]") -> bool:
    """Does ``function``'s source (dedented) match ``pattern``? False where it cannot be read."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return bool(pattern.search(textwrap.dedent(source).strip()))


_plain: Optional[tuple] = None
_PLAIN = {
    "__iter__": re.compile(r"def __iter__\(self\)[^:]*:\s*for (\w+) in self\._iterator:\s*yield \1\s*$"),
    "__aiter__": re.compile(r"async def __aiter__\(self\)[^:]*:\s*async for (\w+) in self\._iterator:\s*yield \1\s*$"),
}


def _plain_classes() -> tuple:
    """The SDK stream classes whose iteration is their ``_iterator`` re-yielded (1.x-3.x: both)."""
    global _plain
    if _plain is None:
        _plain = tuple(
            cls
            for cls, name in zip(sdk_stream_classes(), ("__iter__", "__aiter__"))
            if name in vars(cls) and _source_matches(vars(cls)[name], _PLAIN[name])
        )
    return _plain


def inner_iterator(result: Any) -> Any:
    """The SDK stream's ``_iterator``, where iterating the stream only re-yields it; else None.

    For an ``openai.Stream`` / ``AsyncStream`` itself (not a subclass, not
    another instrumentation's wrapper) whose ``__iter__`` / ``__aiter__`` is
    ``for item in self._iterator: yield item``: the same items and the same
    exceptions, one generator frame less per chunk (its ``__next__`` reads the
    same ``_iterator``, so mixing ``next()`` and ``for`` is unchanged)."""
    if type(result) not in (_plain if _plain is not None else _plain_classes()):
        return None
    return vars(result).get("_iterator")


def strategy() -> Optional[str]:
    """How [DONE] is observed with the installed SDK, or None if it cannot be."""
    if not sdk_stream_classes():
        return None
    try:
        import openai

        major = int(str(openai.__version__).split(".")[0])
    except (ImportError, ValueError, AttributeError):
        return None
    # openai 1.x drains the body after [DONE] ("Ensure the entire stream is consumed").
    if major >= 2:
        return STRATEGY_PEEK
    return STRATEGY_RECORD if event_data_is_plain() else None


class WireWatch:
    """The SSE events of one stream, as far as we need them: the last one."""

    __slots__ = ("events", "last", "done")

    def __init__(self) -> None:
        self.events: Any = None  # the SDK's suspended event generator (peek)
        self.last: "Optional[deque]" = None  # the last event (record)
        # record: did any event say [DONE]? (openai 1.x drains events after it, so the
        # last event need not be the [DONE]); None under peek, where the last event tells.
        self.done: Optional[bool] = None

    def last_event(self) -> Any:
        """The last SSE event the SDK read, or None (none read, or the body ended after it)."""
        if self.last is not None:
            return self.last[0] if self.last else None
        return _suspended_event(self.events)

    def observe(self, monitor: Any) -> None:
        """The stream ended: tell the monitor what the wire showed (see ``read_wire``)."""
        read_wire(monitor, self)

    def release(self) -> None:
        self.events = None
        self.last = None


def _suspended_event(gen: Any) -> Any:
    """The ``sse`` local of the innermost suspended generator of a delegation chain."""
    event = None
    for _ in range(_MAX_DEPTH):
        if gen is None:
            break
        frame = getattr(gen, "gi_frame", None) or getattr(gen, "ag_frame", None)
        if frame is None:  # exhausted or closed: the body ended after the last event
            return None
        candidate = frame.f_locals.get("sse")
        if candidate is not None:
            event = candidate
        gen = getattr(gen, "gi_yieldfrom", None)
    return event


def is_done(event: Any) -> bool:
    data = getattr(event, "data", None)
    return isinstance(data, str) and data.startswith(DONE)


def event_json(event: Any) -> Any:
    """The JSON of an SSE event's data, or None."""
    data = getattr(event, "data", None)
    if not isinstance(data, str) or not data.startswith("{"):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


# openai 1.x's _iter_events, sync and async: the decoder's events re-yielded, nothing else.
_DECODER_ONLY = {
    False: re.compile(
        r"def _iter_events\(self\)[^:]*:\s*yield from self\._decoder\.iter_bytes\(self\.response\.iter_bytes\(\)\)\s*$"
    ),
    True: re.compile(
        r"async def _iter_events\(self\)[^:]*:\s*async for (\w+) in "
        r"self\._decoder\.aiter_bytes\(self\.response\.aiter_bytes\(\)\):\s*yield \1\s*$"
    ),
}
_DATA_PROPERTY = re.compile(r"def data\(self\)[^:]*:\s*return self\._data\s*$")
_decoder_only: Dict[type, bool] = {}  # class -> does its _iter_events only re-yield the decoder's events?
_plain_data: Optional[bool] = None  # does ServerSentEvent.data return self._data (read once)?


def _reads_decoder(stream: Any, is_async: bool) -> bool:
    """Is ``type(stream)._iter_events`` the plain re-yield of the decoder's events (read once per class)?"""
    cls = type(stream)
    known = _decoder_only.get(cls)
    if known is None:
        function = getattr(cls, "_iter_events", None)
        known = _decoder_only[cls] = (
            function is not None and cls in sdk_stream_classes() and _source_matches(function, _DECODER_ONLY[is_async])
        )
    return known


def event_data_is_plain() -> bool:
    """Does the SDK's ``ServerSentEvent.data`` return ``self._data``? Then the recorder reads
    ``_data`` itself: a property call per event less (1.x-3.x: yes; else no ``record`` strategy)."""
    global _plain_data
    if _plain_data is None:
        try:
            from openai._streaming import ServerSentEvent

            _plain_data = _source_matches(ServerSentEvent.data.fget, _DATA_PROPERTY)
        except (ImportError, AttributeError):
            _plain_data = False
    return _plain_data


def _decoded_events(stream: Any, is_async: bool) -> Any:
    """The SDK decoder's events of ``stream``, read as its ``_iter_events`` would; None if it does more."""
    try:
        if not _reads_decoder(stream, is_async):
            return None
        decoder, response = stream._decoder, stream.response
        return decoder.aiter_bytes(response.aiter_bytes()) if is_async else decoder.iter_bytes(response.iter_bytes())
    except Exception:  # noqa: BLE001 - the SDK's own _iter_events then
        return None


def _record(events: Any, last: deque, watch: WireWatch) -> Any:
    """Pass the SDK's events through, keeping the last one and whether one was [DONE].

    ``_data`` is what ``data`` returns (``event_data_is_plain``); only data
    starting with "[" is compared with [DONE] (every chunk's starts with "{")."""
    append = last.append
    watch.done = False
    for sse in events:
        append(sse)
        try:
            data = sse._data
            if data and data[0] == "[" and data.startswith(DONE):
                watch.done = True
        except Exception:  # noqa: BLE001 - an event of another shape: the last event decides
            pass
        yield sse


async def _arecord(events: AsyncIterator[Any], last: deque, watch: WireWatch) -> AsyncIterator[Any]:
    append = last.append
    watch.done = False
    async for sse in events:
        append(sse)
        try:
            data = sse._data
            if data and data[0] == "[" and data.startswith(DONE):
                watch.done = True
        except Exception:  # noqa: BLE001
            pass
        yield sse


def _find_sdk_stream(result: Any, classes: tuple) -> Any:
    target = result
    for _ in range(4):  # another instrumentation's proxy around the SDK stream
        if isinstance(target, classes) and type(target).__name__ in ("Stream", "AsyncStream"):
            return target
        target = getattr(target, "__wrapped__", None)
        if target is None:
            return None
    return None


def watch_stream(result: Any, how: Optional[str]) -> Optional[WireWatch]:
    """Hook one SDK stream before it is read; None where that is not possible."""
    if how is None:
        return None
    classes = sdk_stream_classes()
    stream = _find_sdk_stream(result, classes) if classes else None
    if stream is None:
        return None
    namespace = vars(stream)
    if "_iter_events" in namespace:
        return None  # already hooked
    # Had the stream been read already, the SDK never calls the hook: the watch
    # then sees no event, which is today's rule (no [DONE] known).
    original = stream._iter_events
    is_async = isinstance(stream, classes[1])
    watch = WireWatch()

    def iter_events() -> Any:
        # Called once, by the SDK's __stream__: unhook first (no cycle stream -> hook stays).
        namespace.pop("_iter_events", None)
        if how == STRATEGY_PEEK:
            watch.events = events = original()
            return events
        events = _decoded_events(stream, is_async)
        if events is None:
            events = original()
        last: deque = deque(maxlen=1)
        watch.last = last
        return _arecord(events, last, watch) if is_async else _record(events, last, watch)

    namespace["_iter_events"] = iter_events
    return watch


def read_wire(monitor: Any, watch: WireWatch) -> None:
    """Tell the monitor what the wire showed at the end: ``[DONE]`` or not, and
    the usage of a final error object (OpenRouter's, after a ``length`` finish).

    Neither can matter once every choice has finished and the usage is in:
    the outcome rules consult ``done_seen`` only for a stream without all its
    finish reasons, and the error object's usage only fills a missing one.
    Then the suspended SDK frames are not read at all (the common case)."""
    if monitor.terminal and monitor.input_tokens is not None:
        return
    event = watch.last_event()
    monitor.done_seen = is_done(event) if watch.done is None else watch.done
    if monitor.input_tokens is None and '"error"' in (getattr(event, "data", None) or ""):
        read_error_object_usage(monitor, event_json(event))
