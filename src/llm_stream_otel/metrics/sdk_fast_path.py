"""The metrics fast path: one stream's ending written into the OpenTelemetry Python SDK's own aggregations.

Why: through the public API every ``Histogram.record`` / ``Counter.add`` of
the Python SDK cleans the attribute set, hashes it recursively, and walks
consumer -> reader storages -> view matches: about 120,000 instructions a
call (callgrind), and a stream's ending makes seven of them plus the gap
histogram. Our attribute sets repeat (they are low-cardinality by design), so
here the cleaned attributes and each view's aggregation key are computed once
per attribute set and cached, and the instrument's view matches once per set
of readers. What is left per value is what the SDK's own
``_ViewInstrumentMatch.consume_measurement`` does with the key in hand: find
or create the aggregation (under the match's lock when a delta reader resets
it) and call the aggregation's own ``aggregate()``, which also offers the
value to the exemplar reservoir. Cardinality overflow, attribute-key views,
delta resets and ``record_min_max`` stay the SDK's business.

Two writes use it: ``write_values`` (one value per instrument: duration, time
to first chunk, chunks, token usage, the counters) and ``merge_gaps`` (a
stream's in-stream aggregated gaps, see ``instruments.GapRecorder``).

Both use private SDK internals, so they are guarded: enabled only after a
self-test (``proven``) has shown on the installed SDK that they export the
same points as the public API (count, sum, bucket counts, min, max, values,
attributes, histogram exemplars; cumulative and delta; an attribute-key view),
and only for aggregations whose behaviour the test covers. Any surprise at run
time falls back to the public API, for good. Never called from a finalizer
(endings run outside the garbage collector, see ``handoff``), so taking the
SDK's locks here is as safe as ``record()`` taking them.
Opt out with ``OTEL_INSTRUMENTATION_LLM_STREAM_METRICS_FAST_PATH=false``.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from operator import add
from time import time_ns
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import semconv as t

_logger = logging.getLogger(__name__)

# What the fast path needs from the SDK, resolved once; None = not usable here.
_sdk: Optional[Dict[str, Any]] = None
_sdk_state = "unknown"  # unknown | proven | unusable
_sdk_lock = threading.Lock()
ATTRIBUTE_SET_CACHE = 1024  # distinct attribute sets remembered (then the cache starts over)

# (instrument, value, attributes, is_counter)
Record = Tuple[Any, float, Dict[str, Any], bool]
_UNSET = object()


def _load_sdk() -> Dict[str, Any]:
    from opentelemetry.context import get_current
    from opentelemetry.metrics import NoOpCounter, NoOpHistogram
    from opentelemetry.sdk.metrics._internal import _view_instrument_match as vim
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
        _SumAggregation,
    )
    from opentelemetry.sdk.metrics._internal.exemplar.exemplar_filter import (
        AlwaysOffExemplarFilter,
        AlwaysOnExemplarFilter,
        TraceBasedExemplarFilter,
    )
    from opentelemetry.sdk.metrics._internal.instrument import _Counter, _Histogram
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    from opentelemetry.trace import INVALID_SPAN, get_current_span
    from opentelemetry.trace import Span as ApiSpan
    from opentelemetry.trace.propagation import _SPAN_KEY

    try:
        from opentelemetry.sdk.metrics._internal.exemplar import exemplar_reservoir as reservoirs
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
            AlignedHistogramBucketExemplarReservoir as aligned,
        )
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import ExemplarBucket
        from opentelemetry.sdk.metrics._internal.exemplar.exemplar_reservoir import (
            SimpleFixedSizeExemplarReservoir as simple,
        )
    except ImportError:  # an SDK without them: every reservoir is offered through its own offer()
        aligned = ExemplarBucket = simple = reservoirs = None

    def span_ids(context: Any) -> Optional[Tuple[int, int]]:
        """What ``ExemplarBucket.offer`` reads of the context: the span's ids, None for no span."""
        span = get_current_span(context)
        if span != INVALID_SPAN:
            span_context = span.get_span_context()
            return span_context.span_id, span_context.trace_id
        return None

    span_types: Dict[type, bool] = {}  # type -> isinstance(span, Span): the ABC's check once per type

    def trace_sampled(context: Any) -> bool:
        """``TraceBasedExemplarFilter.should_sample`` for ``context``, without its two calls
        (``get_current_span``, the ``sampled`` property) and with ``Span``'s ABC check once
        per span type: the queue's self-test compares."""
        span = (context if context is not None else get_current()).get(_SPAN_KEY)
        if span is None:
            return False
        kind = type(span)
        is_span = span_types.get(kind)
        if is_span is None:
            if len(span_types) >= 64:
                span_types.clear()
            is_span = span_types[kind] = isinstance(span, ApiSpan)
        if not is_span or span == INVALID_SPAN:
            return False
        return bool(span.get_span_context().trace_flags & 1)

    return {
        "Histogram": _Histogram,
        "Counter": _Counter,
        "NoOp": (NoOpHistogram, NoOpCounter),
        "Explicit": _ExplicitBucketHistogramAggregation,
        "Sum": _SumAggregation,
        "Drop": _DropAggregation,
        "Measurement": Measurement,
        "Aligned": aligned,
        "Simple": simple,
        "reservoirs": reservoirs,  # the module: its ``randrange`` read when it draws
        "Bucket": ExemplarBucket,
        "span_ids": span_ids,
        "TraceBased": TraceBasedExemplarFilter,
        "trace_sampled": trace_sampled,
        "hash_attributes": vim._hash_attributes,
        "get_current": get_current,
        # Filters whose answer depends on the context alone: asked once per ending.
        "context_filters": (AlwaysOnExemplarFilter, AlwaysOffExemplarFilter, TraceBasedExemplarFilter),
    }


def proven() -> bool:
    """Load the SDK internals and self-test both writes, once per process."""
    global _sdk, _sdk_state
    if _sdk_state != "unknown":
        return _sdk_state == "proven"
    with _sdk_lock:
        if _sdk_state == "unknown":
            try:
                sdk = _load_sdk()
                ok = _self_test_merge(sdk) and _self_test_values(sdk)
                if ok:
                    _sdk = sdk
            except Exception:  # noqa: BLE001 - another SDK version: use the public API
                _logger.debug("llm_stream_otel: metrics fast path unavailable", exc_info=True)
                ok = False
            _sdk_state = "proven" if ok else "unusable"
            _logger.debug("llm_stream_otel: metrics fast path %s", _sdk_state)
    return _sdk_state == "proven"


def sdk_instrument(instrument: Any) -> Any:
    """The SDK instrument behind an API object (``_Proxy*`` before a provider is set)."""
    while hasattr(instrument, "_real_instrument"):
        real = instrument._real_instrument
        if real is None:
            return None  # the global provider is not set yet: record() would be a no-op
        instrument = real
    return instrument


class _Value:
    """What ``aggregate()`` and the exemplar reservoir read of a ``Measurement``.

    The SDK's frozen dataclass costs several thousand instructions to build
    and re-cleans the attributes; these are cleaned once per attribute set.
    The self-test proves that the SDK's aggregations read nothing else."""

    __slots__ = ("value", "time_unix_nano", "instrument", "context", "attributes", "ids")

    def __init__(
        self, value: float, time_unix_nano: int, instrument: Any, context: Any, attributes: Any, ids: Any = None
    ) -> None:
        self.value = value
        self.time_unix_nano = time_unix_nano
        self.instrument = instrument
        self.context = context
        self.attributes = attributes
        self.ids = ids  # the context's span ids (sdk "span_ids"), for the exemplar; not a Measurement field


class _Target:
    """One instrument's SDK view matches, for one set of readers."""

    __slots__ = ("api", "real", "consumer", "storages", "matches", "usable", "mergeable", "bounds")

    def __init__(self, sdk: Dict[str, Any], api: Any) -> None:
        self.api = api
        self.real = real = sdk_instrument(api)
        self.consumer = None
        self.storages: Any = None
        self.matches: List[Tuple[Any, Optional[frozenset]]] = []
        self.usable = False  # values can be written here
        self.mergeable = False  # gaps can be merged here (every view an explicit-bucket histogram)
        self.bounds: Optional[tuple] = None
        if real is None or isinstance(real, sdk["NoOp"]):
            return
        kind = type(real)
        if kind is not sdk["Histogram"] and kind is not sdk["Counter"]:
            return
        self.consumer = consumer = real._measurement_consumer
        self.storages = storages = consumer._reader_storages
        allowed = (sdk["Explicit"], sdk["Drop"]) if kind is sdk["Histogram"] else (sdk["Sum"], sdk["Drop"])
        bounds = set()
        for storage in list(storages.values()):
            for match in storage._get_or_init_view_instrument_match(real):
                template = type(match._aggregation)
                if template not in allowed:
                    return
                if template is sdk["Drop"]:
                    continue
                if template is sdk["Explicit"]:
                    bounds.add(match._aggregation._boundaries)
                keys = match._view._attribute_keys
                self.matches.append((match, None if keys is None else frozenset(keys)))
        self.usable = True
        self.mergeable = kind is sdk["Histogram"] and len(bounds) <= 1
        self.bounds = next(iter(bounds)) if len(bounds) == 1 else None

    def current(self) -> bool:
        """Still the same readers (a reader added or removed swaps the consumer's mapping)?"""
        return self.consumer is None or self.consumer._reader_storages is self.storages


class _AttributeSet:
    """An attribute set as the SDK sees it: cleaned once, and its key per view."""

    __slots__ = ("cleaned", "views")

    def __init__(self, cleaned: Dict[str, Any]) -> None:
        self.cleaned = cleaned
        # view attribute keys (None: all) -> (the point's attributes, the aggregation key)
        self.views: Dict[Optional[frozenset], Tuple[Dict[str, Any], Any]] = {}

    def for_view(self, sdk: Dict[str, Any], keys: Optional[frozenset]) -> Tuple[Dict[str, Any], Any]:
        found = self.views.get(keys)
        if found is None:
            cleaned = self.cleaned
            attrs = cleaned if keys is None else {k: v for k, v in cleaned.items() if k in keys}
            found = self.views[keys] = (attrs, sdk["hash_attributes"](attrs))
        return found


def _aggregate(sdk: Dict[str, Any], aggregation: Any, value_: _Value, should_sample: bool) -> None:
    """``aggregation.aggregate(value_)``: inlined for the two aggregations we write most
    (what their ``aggregate`` does, under the same lock), the method itself for the rest."""
    kind = type(aggregation)
    value = value_.value
    if kind is sdk["Explicit"]:
        with aggregation._lock:
            if aggregation._value is None:
                aggregation._value = aggregation._get_empty_bucket_counts()
            aggregation._sum += value
            if aggregation._record_min_max:
                if value < aggregation._min:
                    aggregation._min = value
                if value > aggregation._max:
                    aggregation._max = value
            aggregation._value[bisect_left(aggregation._boundaries, value)] += 1
    elif kind is sdk["Sum"]:
        with aggregation._lock:
            if aggregation._value is None:
                aggregation._value = 0
            aggregation._value = aggregation._value + value
    else:
        aggregation.aggregate(value_, should_sample)
        return
    if should_sample:
        _offer(sdk, aggregation._reservoir, value, value_.time_unix_nano, value_.attributes, value_.context, value_.ids)


def _offer(sdk: Dict[str, Any], reservoir: Any, value: float, now: int, attributes: Any, context: Any, ids: Any) -> None:
    """``reservoir.offer(...)``; for a histogram's aligned reservoir, what its ``offer`` and
    its bucket's ``offer`` do, inlined: the bucket found by ``bisect_left`` (its
    ``_find_bucket_index`` loop: the first boundary >= value) under the same lock, and
    the span's ids (``ids``: ``span_ids(context)``) read once per ending, not per value."""
    if type(reservoir) is sdk["Aligned"]:
        with reservoir._lock:
            bucket = reservoir._reservoir_storage[bisect_left(reservoir._boundaries, value)]
            if type(bucket) is not sdk["Bucket"]:
                bucket.offer(value, now, attributes, context)
                return
            bucket._ExemplarBucket__value = value
            bucket._ExemplarBucket__time_unix_nano = now
            bucket._ExemplarBucket__attributes = attributes
            if ids is not None:
                bucket._ExemplarBucket__span_id, bucket._ExemplarBucket__trace_id = ids
            bucket._ExemplarBucket__offered = True
    else:
        reservoir.offer(value, now, attributes, context)


class FastPath:
    """The fast path of one ``Instruments``: resolved targets and cached attribute sets."""

    def __init__(self, sdk: Optional[Dict[str, Any]] = None) -> None:
        self._sdk = sdk  # the self-test's, before the fast path is proven; else the proven one
        self._targets: Dict[int, _Target] = {}
        self._sets: Dict[tuple, _AttributeSet] = {}
        # id(dict) -> (the dict, its set): the same dict objects come back (stream.metric_attributes
        # interns them), found here without a tuple of their items. Holding the dict keeps its id its own.
        self._by_id: Dict[int, Tuple[Dict[str, Any], _AttributeSet]] = {}
        self.broken = False

    def usable(self) -> bool:
        return not self.broken and proven()

    def _target(self, sdk: Dict[str, Any], instrument: Any) -> _Target:
        target = self._targets.get(id(instrument))
        if target is None or target.api is not instrument or not target.current():
            target = self._targets[id(instrument)] = _Target(sdk, instrument)
        return target

    def _set(self, sdk: Dict[str, Any], real: Any, attributes: Dict[str, Any]) -> _AttributeSet:
        items = tuple(attributes.items())
        found = self._sets.get(items)
        if found is None:
            if len(self._sets) >= ATTRIBUTE_SET_CACHE:
                self._sets.clear()
            # A real Measurement cleans the attributes exactly as record() would.
            cleaned = sdk["Measurement"](0, 0, real, None, attributes).attributes
            found = self._sets[items] = _AttributeSet(dict(cleaned or {}))
        return found

    def _known(self, sdk: Dict[str, Any], real: Any, attributes: Dict[str, Any]) -> _AttributeSet:
        """``_set`` for a dict seen before, by identity (callers never change a dict they passed)."""
        known = self._by_id.get(id(attributes))
        if known is not None and known[0] is attributes:
            return known[1]
        found = self._set(sdk, real, attributes)
        if len(self._by_id) >= ATTRIBUTE_SET_CACHE:
            self._by_id.clear()
        self._by_id[id(attributes)] = (attributes, found)
        return found

    def _fail(self) -> None:
        self.broken = True
        _logger.debug("llm_stream_otel: metrics fast path off after a surprise", exc_info=True)

    # --- single values -------------------------------------------------------------
    def write_values(self, records: Sequence[Record]) -> List[Record]:
        """Write what it can; returns the records the public API must write."""
        return self.write_ending(records)[0]

    def write_ending(
        self, records: Sequence[Record], gaps: Optional[Tuple[Any, tuple, Any, Dict[str, Any]]] = None, now: Optional[int] = None
    ) -> Tuple[List[Record], Optional[str]]:
        """A stream's ending in one pass: the values, then (``gaps``: histogram,
        bounds, monitor, attributes) the gap merge, sharing the context, the time
        (``now``: the ending's, when a queue writes it later; else the clock's)
        and the exemplar filter's answer. Returns the records the public API must
        write, and the merge's path (None: the public API must record the gaps).

        Runs once per stream ending, so it is written for speed: the lookups
        of ``_target`` and ``_AttributeSet.for_view`` inlined, attribute sets
        found by the dict's identity (``_known``), one value object reused (the
        SDK reads its fields and keeps none of them, as the self-test checks),
        the exemplar filter asked once when its answer depends on the context
        alone, and the meter's enabled flag once per ending. The dicts of
        ``records`` must not change afterwards (ours are interned, read-only)."""
        sdk = self._sdk or _sdk
        if sdk is None or self.broken:
            return list(records), None
        leftover: List[Record] = []
        index = 0
        touched = False
        targets = self._targets
        try:
            if now is None:
                now = time_ns()
            context = sdk["get_current"]()
            value_ = _Value(0, now, None, context, None, sdk["span_ids"](context))
            context_filters = sdk["context_filters"]
            asked: Any = None  # the context-only exemplar filter asked, and its answer
            answer = False
            last_attributes: Any = None  # the records of an ending share attribute dicts
            attribute_set: Any = None
            meter_config: Any = _UNSET  # the instruments of one meter share its config: asked once
            enabled = False
            for index, record in enumerate(records):
                touched = False
                instrument, value, attributes, _is_counter = record
                target = targets.get(id(instrument))
                if (
                    target is None
                    or target.api is not instrument
                    or (target.consumer is not None and target.consumer._reader_storages is not target.storages)
                ):
                    target = self._target(sdk, instrument)
                real = target.real
                if not target.usable or type(value) not in (int, float) or not (0 <= value < math.inf):
                    leftover.append(record)  # the public API decides (and warns about a bad value)
                    continue
                if real._meter_config is not meter_config:
                    meter_config = real._meter_config
                    enabled = real._is_enabled()
                if not enabled:
                    continue  # a disabled meter: record() would drop it too
                if attributes is not last_attributes:
                    attribute_set = self._known(sdk, real, attributes)
                    last_attributes = attributes
                cleaned = attribute_set.cleaned
                value_.value = value
                value_.instrument = real
                value_.attributes = cleaned
                exemplar_filter = target.consumer._sdk_config.exemplar_filter
                if exemplar_filter is asked:
                    should_sample = answer
                elif type(exemplar_filter) in context_filters:
                    should_sample = answer = bool(exemplar_filter.should_sample(value, now, cleaned, context))
                    asked = exemplar_filter
                else:
                    should_sample = exemplar_filter.should_sample(value, now, cleaned, context)
                views = attribute_set.views
                for match, keys in target.matches:
                    found = views.get(keys)
                    attrs, key = found if found is not None else attribute_set.for_view(sdk, keys)
                    if match._reset_on_collect:
                        # collect() swaps the aggregations out: hold the lock until it is aggregated.
                        with match._lock:
                            _aggregate(sdk, match._get_or_create_aggregation(key, dict(attrs)), value_, should_sample)
                    else:
                        aggregation = match._attributes_aggregation.get(key)
                        if aggregation is None:
                            with match._lock:
                                aggregation = match._get_or_create_aggregation(key, dict(attrs))
                        _aggregate(sdk, aggregation, value_, should_sample)
                    touched = True  # in one view at least: the public API must not record it again
        except Exception:  # noqa: BLE001 - a surprise: the public API takes over from here, for good
            self._fail()
            rest = records[index + 1 :] if touched else records[index:]
            leftover.extend(rest)
            return leftover, None
        if gaps is None:
            return leftover, None
        return leftover, self.merge_gaps(*gaps, ending=(context, now, asked, answer, value_.ids))

    # --- the gap histogram ---------------------------------------------------------
    def merge_gaps(
        self, histogram: Any, bounds: tuple, monitor: Any, attributes: Dict[str, Any], ending: Optional[tuple] = None
    ) -> Optional[str]:
        """Merge a stream's gaps into the SDK's aggregations; None if the public API must be used.

        ``ending``: (context, time, exemplar filter, its answer, span ids) of ``write_ending``."""
        if monitor.gaps < 1:
            return "none"
        sdk = self._sdk or _sdk
        if sdk is None or self.broken:
            return None
        try:
            target = self._target(sdk, histogram)
            real = target.real
            if real is None or isinstance(real, sdk["NoOp"]):
                return "noop"
            if not target.usable or not target.mergeable:
                return None
            if not real._is_enabled():
                return "disabled"
            if not target.matches:
                return "dropped"
            if target.bounds != bounds:
                return None
            attribute_set = self._known(sdk, real, attributes)
        except Exception:  # noqa: BLE001 - nothing merged yet: the public API takes over
            self._fail()
            return None
        return _merge(sdk, target, attribute_set, monitor, ending)


def _merge(
    sdk: Dict[str, Any], target: _Target, attribute_set: _AttributeSet, monitor: Any, ending: Optional[tuple] = None
) -> str:
    """The merge: the stream's bucket counts, sum, min and max, as N ``record()`` calls would leave them.

    The same locks, in the same order, as consume_measurement() + aggregate()
    (and collect()): the match's, then the aggregation's. The largest gap is
    offered to the exemplar reservoir (one exemplar per stream, not per gap)."""
    exemplar_filter = target.consumer._sdk_config.exemplar_filter
    if ending is None:
        context, now, asked, answer = sdk["get_current"](), time_ns(), None, False
        ids = sdk["span_ids"](context)
    else:
        context, now, asked, answer, ids = ending
    cleaned = attribute_set.cleaned
    measurement = _Value(monitor.gap_max, now, target.real, context, cleaned)
    if exemplar_filter is asked:  # a context-only filter, already asked in this context
        should_sample = answer
    else:
        should_sample = exemplar_filter.should_sample(measurement.value, now, cleaned, context)
    counts = monitor.gap_counts
    total = monitor.gap_total
    low, high = monitor.gap_min, monitor.gap_max
    for match, keys in target.matches:
        attrs, key = attribute_set.for_view(sdk, keys)
        with match._lock:
            aggregation = match._attributes_aggregation.get(key)
            if aggregation is None:
                aggregation = match._get_or_create_aggregation(key, dict(attrs))
            with aggregation._lock:
                if aggregation._value is None:
                    aggregation._value = aggregation._get_empty_bucket_counts()
                aggregation._value = list(map(add, aggregation._value, counts))  # same length: same bounds
                aggregation._sum += total
                if aggregation._record_min_max:
                    if low < aggregation._min:
                        aggregation._min = low
                    if high > aggregation._max:
                        aggregation._max = high
            if should_sample:
                _offer(sdk, aggregation._reservoir, measurement.value, now, cleaned, context, ids)
    return "sdk"


# --------------------------------------------------------------------------- self-tests


class _Gaps:
    """The monitor fields the merge reads, for the self-test."""

    def __init__(self, gaps: List[float], bounds: Sequence[float]) -> None:
        from bisect import bisect_left

        self.gap_counts = [0] * (len(bounds) + 1)
        for gap in gaps:
            self.gap_counts[bisect_left(bounds, gap)] += 1
        self.gap_total = sum(gaps)
        self.gap_min = min(gaps)
        self.gap_max = max(gaps)
        self.gaps = len(gaps)


def _readers() -> List[Any]:
    from opentelemetry.sdk.metrics import Counter as SdkCounter
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    delta = {SdkHistogram: AggregationTemporality.DELTA, SdkCounter: AggregationTemporality.DELTA}
    return [InMemoryMetricReader(), InMemoryMetricReader(preferred_temporality=delta)]


def _same(merged: List[Any], recorded: List[Any]) -> bool:
    if not merged or len(merged) != len(recorded):
        return False
    for got, want in zip(merged, recorded):
        if len(got) != len(want):
            return False
        for a, b in zip(got, want):
            if (a[0], a[1], a[3], a[4], a[5], a[6], a[7]) != (b[0], b[1], b[3], b[4], b[5], b[6], b[7]):
                return False
            if abs(a[2] - b[2]) > 1e-9 * max(1.0, abs(b[2])):
                return False
    return True


def _self_test_merge(sdk: Dict[str, Any]) -> bool:
    """Prove on this SDK that the merge exports what per-gap ``record()`` calls export."""
    from opentelemetry.sdk.metrics import MeterProvider

    bounds = tuple(t.SECONDS_BUCKETS)
    batches = [
        [0.004, 0.0005, 0.02, 0.02, 0.5, 0.011, 3.0, 100.0, 0.01],
        [0.03, 0.0001, 0.7],
        [1.5, 1.25],
    ]
    attrs = {"a": "x", "n": 1, "flag": True}

    def run(merge: bool) -> List[Any]:
        rs = _readers()
        provider = MeterProvider(metric_readers=rs, shutdown_on_exit=False)
        try:
            histogram = provider.get_meter("llm_stream_otel.selftest").create_histogram(
                "selftest", unit="s", explicit_bucket_boundaries_advisory=bounds
            )
            fast = FastPath(sdk)
            points = []
            for batch in batches:
                if merge:
                    target = _Target(sdk, histogram)
                    if not (target.usable and target.mergeable and target.bounds == bounds):
                        return []
                    _merge(sdk, target, fast._set(sdk, target.real, attrs), _Gaps(batch, bounds))
                else:
                    for gap in batch:
                        histogram.record(gap, attrs)
                for reader in rs:
                    points.append(_points(reader, exemplars=False))
            return points
        finally:
            provider.shutdown()

    return _same(run(True), run(False))


def _self_test_values(sdk: Dict[str, Any]) -> bool:
    """Prove on this SDK that ``write_values`` exports what ``record()`` / ``add()`` export,
    histogram exemplars included, with an attribute-key view and a delta reader."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.trace import TracerProvider

    tracer_provider = TracerProvider()
    span = tracer_provider.get_tracer("llm_stream_otel.selftest").start_span("selftest")
    full = {"a": "x", "n": 1, "flag": True}
    other = {"a": "y", "n": 2, "flag": False}
    batches = [
        [("h", 0.004, full), ("h", 3.0, full), ("c", 1, full), ("k", 0.5, full), ("c", 2, other), ("h", 0.0, other)],
        [("h", 100.0, full), ("c", 1, other), ("k", 0.02, other)],
    ]

    def run(fast_path: bool) -> List[Any]:
        rs = _readers()
        views = [View(instrument_name="selftest.keys", attribute_keys={"a"})]
        provider = MeterProvider(metric_readers=rs, views=views, shutdown_on_exit=False)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            meter = provider.get_meter("llm_stream_otel.selftest")
            instruments = {
                "h": (meter.create_histogram("selftest.h", unit="s", explicit_bucket_boundaries_advisory=t.SECONDS_BUCKETS), False),
                "k": (meter.create_histogram("selftest.keys", unit="s"), False),
                "c": (meter.create_counter("selftest.c"), True),
            }
            fast = FastPath(sdk)
            points = []
            for batch in batches:
                records = [(instruments[name][0], value, attrs, instruments[name][1]) for name, value, attrs in batch]
                if fast_path:
                    if fast.write_values(records) or fast.broken:
                        return []
                else:
                    for instrument, value, attrs, is_counter in records:
                        (instrument.add if is_counter else instrument.record)(value, attrs)
                for reader in rs:
                    points.append(_points(reader, exemplars=True))
            return points
        finally:
            otel_context.detach(token)
            provider.shutdown()

    try:
        return _same(run(True), run(False))
    finally:
        span.end()


def data_points(reader: Any) -> Iterator[Tuple[Any, Any]]:
    """(metric, point) for every point a reader collects now (the self-tests' view of an export)."""
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    yield metric, point


def _points(reader: Any, exemplars: bool) -> List[tuple]:
    """Comparable points: (attributes, count, sum, buckets, bounds, min, max, extras)."""
    out = []
    for metric, p in data_points(reader):
        extras: tuple = (metric.name,)
        is_histogram = hasattr(p, "bucket_counts")
        if exemplars and is_histogram:
            extras += tuple(
                (e.value, e.span_id, e.trace_id, tuple(sorted(dict(e.filtered_attributes or {}).items())))
                for e in p.exemplars
            )
        out.append(
            (
                tuple(sorted(dict(p.attributes).items())),
                p.count if is_histogram else 1,
                p.sum if is_histogram else p.value,
                tuple(p.bucket_counts) if is_histogram else (),
                tuple(p.explicit_bounds) if is_histogram else (),
                p.min if is_histogram else None,
                p.max if is_histogram else None,
                extras,
            )
        )
    return sorted(out, key=repr)
