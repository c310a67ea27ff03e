"""The span fast path: a stream's summary attributes written into the SDK span's own attribute dict.

Why: the Python SDK's ``Span.set_attributes`` cleans the whole mapping
(recursively, a copy of each value) and re-inserts every key under two
locks: about 130,000 instructions (callgrind) for the ~20 attributes a
stream's ending sets, its largest single cost after the metrics. Our values
are of four plain types (str, bool, int, float) or a list of strings, which
cleaning leaves as they are (a list becomes a tuple). So here they are
checked by type and written under the same two locks, with the same
replacement of a key that is already there (moved to the end).

Guarded like the metrics fast path: used only for the SDK's own span class
holding the SDK's own ``BoundedAttributes``, once a self-test on the
installed SDK has shown that it leaves exactly what ``set_attributes``
leaves (values, their types, order, dropped count). Anything else (a value
of another type, a string the length limit would cut, a count the
attribute limit would drop, an ended span, another SDK's span, a surprise)
goes through ``set_attributes``, the last one for good. Opt out with
``OTEL_INSTRUMENTATION_LLM_STREAM_SPAN_FAST_PATH=false``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

_logger = logging.getLogger(__name__)

_PLAIN = (str, bool, int, float)
_enabled = True
_state = "unknown"  # unknown | proven | unusable
_classes: Optional[Tuple[type, type]] = None  # (the SDK's span class, BoundedAttributes)
_lock = threading.Lock()


def configure(enabled: bool) -> None:
    """Set by the instrumentor (``span_fast_path``)."""
    global _enabled
    _enabled = enabled


_SCALARS = frozenset(_PLAIN)
_KEYS = frozenset((str,))


# (keys..., value types...) of attribute dicts seen to be all plain scalars: the same few recur
# (each ending of one kind builds its dict in the same order), so most are checked by one lookup.
_PLAIN_SHAPES: Dict[tuple, bool] = {}
_PLAIN_SHAPES_LIMIT = 256


def _plain(attributes: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The attributes as cleaning would leave them, or None if one is not of our plain shapes.

    Checked in C: the keys and the values' types as one tuple, found among the
    shapes seen before (a tuple matches only with the same keys and the very same
    types), else by ``frozenset.issuperset(map(type, ...))``: an ending's ~20
    scalar values are taken as they are, without a Python step each."""
    shape = (*attributes, *map(type, attributes.values()))
    if shape in _PLAIN_SHAPES:
        return attributes
    if not _KEYS.issuperset(map(type, attributes)) or "" in attributes:
        return None
    if _SCALARS.issuperset(map(type, attributes.values())):
        if len(_PLAIN_SHAPES) >= _PLAIN_SHAPES_LIMIT:
            _PLAIN_SHAPES.clear()
        _PLAIN_SHAPES[shape] = True
        return attributes
    clean: Dict[str, Any] = {}
    for key, value in attributes.items():
        kind = type(value)
        if kind in _PLAIN:
            clean[key] = value
        elif (kind is list or kind is tuple) and value and all(type(item) is str for item in value):
            clean[key] = tuple(value)
        else:
            return None
    return clean


def _fits(clean: Mapping[str, Any], limit: Optional[int]) -> bool:
    """No string longer than the SDK's value-length limit (it would be cut)."""
    if limit is None:
        return True
    for value in clean.values():
        if type(value) is str:
            if len(value) > limit:
                return False
        elif type(value) is tuple and any(len(item) > limit for item in value):
            return False
    return True


def _write(
    span: Any, attributes: Mapping[str, Any], classes: Tuple[type, type], sequences: Optional[Mapping[str, Any]] = None
) -> bool:
    """Write like ``set_attributes({**attributes, **sequences})``; False: nothing written, the public API must."""
    span_class, bounded_class = classes
    if type(span) is not span_class:
        return False
    clean = _plain(attributes)
    if clean is None:
        return False
    more: Mapping[str, Any] = _strings(sequences) if sequences else _NONE
    if more is None:
        return False
    with span._lock:
        if span._end_time is not None:
            return False  # set_attributes warns and drops them
        bounded = span._attributes
        limit = bounded.max_value_len
        if type(bounded) is not bounded_class or bounded._immutable or not (_fits(clean, limit) and _fits(more, limit)):
            return False
        with bounded._lock:
            store = bounded._dict
            maxlen = bounded.maxlen
            if maxlen is not None and len(store) + len(clean) + len(more) > maxlen:
                return False  # some would be dropped: the SDK's rules and warning
            expected = len(store) + len(clean)
            store.update(clean)
            if len(store) != expected:
                # a key was there already: set_attributes re-inserts it at the end, in the given order
                for key in clean:
                    store[key] = store.pop(key)
            if more:
                expected = len(store) + len(more)
                store.update(more)  # a key in both: clean's place, more's value, as {**clean, **more}
                if len(store) != expected:
                    for key in more:
                        if key not in clean:
                            store[key] = store.pop(key)
    return True


_NONE: Mapping[str, Any] = {}


def _strings(sequences: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Attributes whose values are non-empty lists (or tuples) of strings, as cleaning leaves them (tuples)."""
    out: Dict[str, Any] = {}
    for key, value in sequences.items():
        kind = type(value)
        if type(key) is not str or not key or (kind is not list and kind is not tuple) or not value:
            return None
        if not _KEYS.issuperset(map(type, value)):
            return None
        out[key] = tuple(value)
    return out


def set_span_attributes(span: Any, attributes: Mapping[str, Any], sequences: Optional[Mapping[str, Any]] = None) -> None:
    """``span.set_attributes({**attributes, **sequences})``, through the fast path where it is proven.

    ``sequences``: the attributes whose values are lists of strings, apart, so
    that the plain rest is checked in one pass."""
    global _state
    if _enabled and (_state == "proven" or (_state == "unknown" and _prove())):
        try:
            if _write(span, attributes, _classes, sequences):  # type: ignore[arg-type]
                return
        except Exception:  # noqa: BLE001 - another SDK than the self-test's: the public API, for good
            _state = "unusable"
            _logger.debug("llm_stream_otel: span fast path off after a surprise", exc_info=True)
    span.set_attributes({**attributes, **sequences} if sequences else attributes)


def _prove() -> bool:
    global _classes, _state
    with _lock:
        if _state == "unknown":
            try:
                classes = _load()
                ok = _self_test(classes)
            except Exception:  # noqa: BLE001 - another SDK: the public API
                _logger.debug("llm_stream_otel: span fast path unavailable", exc_info=True)
                ok = False
            if ok:
                _classes = classes
            _state = "proven" if ok else "unusable"
            _logger.debug("llm_stream_otel: span fast path %s", _state)
    return _state == "proven"


def _load() -> Tuple[type, type]:
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.trace import _Span

    return _Span, BoundedAttributes


def proven() -> bool:
    """Is the fast path in use here (for ``doctor`` and the tests)?"""
    return _enabled and (_state == "proven" or (_state == "unknown" and _prove()))


# The shapes an ending sets, a key that is there already, and one of each plain type.
_SAMPLE = {
    "llm.stream.outcome": "completed",
    "llm.stream.chunks": 7,
    "llm.stream.finish_reason_missing": True,
    "llm.stream.time_to_first_chunk": 0.125,
    "gen_ai.response.finish_reasons": ["stop", "length"],
    "gen_ai.request.model": "replaced",
}


def _self_test(classes: Tuple[type, type]) -> bool:
    """Prove on this SDK that the fast path leaves what ``set_attributes`` leaves, and steps aside where it must."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    def spans(limits: Optional[Any] = None) -> Tuple[Any, Any]:
        provider = TracerProvider(span_limits=limits) if limits is not None else TracerProvider()
        tracer = provider.get_tracer("llm_stream_otel.selftest")
        start = {"gen_ai.request.model": "m", "server.port": 443}
        return tracer.start_span("a", attributes=start), tracer.start_span("b", attributes=start)

    def seen(span: Any) -> Any:
        attributes = span.attributes
        return [(key, type(value), value) for key, value in attributes.items()], span.dropped_attributes

    same = True
    scalars = {key: value for key, value in _SAMPLE.items() if type(value) is not list}
    apart = {key: value for key, value in _SAMPLE.items() if type(value) is list}
    # With a sequence to convert, all plain, and the sequences apart (replacing a start attribute the
    # plain ones replace too, and one only a sequence replaces, beside a new one).
    cases = (
        (_SAMPLE, None),
        (scalars, None),
        (scalars, apart),
        (scalars, {"gen_ai.request.model": ["r"]}),
        (scalars, {"server.port": ["p"], "llm.stream.extra": ["e"]}),
    )
    for sample, sequences in cases:
        fast, public = spans()
        if not _write(fast, sample, classes, sequences):
            return False
        public.set_attributes({**sample, **sequences} if sequences else sample)
        same = same and seen(fast) == seen(public)
    # Where the SDK would cut, drop or refuse, the fast path must write nothing.
    short, _ = spans(SpanLimits(max_attribute_length=4))
    few, _ = spans(SpanLimits(max_attributes=3))
    ended, _ = spans()
    ended.end()
    steps_aside = not any(_write(span, _SAMPLE, classes) for span in (short, few, ended))
    odd, _ = spans()
    steps_aside = steps_aside and not _write(odd, {"x": {"a": 1}}, classes) and not _write(odd, {"x": []}, classes)
    return same and steps_aside
