"""Stream endings written into the SDK's aggregations many at once, when a reader collects.

Why: even on the fast path, writing one ending costs about 175,000
instructions (callgrind, openai 1.x): six values, each looked up, written
under two locks and offered to an exemplar reservoir, then the gap merge.
Most of that is per-value bookkeeping that repeats, stream after stream, for
the same few aggregations. So an ending only queues what it would write
(``add``: its records, its gaps, the time and its context); the queue is
written (``flush``) when any reader collects, by an observable instrument's
callback, which the SDK runs before it collects the synchronous instruments,
and whenever it holds ``PENDING_LIMIT`` endings. A flush groups the values by
the aggregation they land in (instrument, view, attribute key) and writes
each group once: bucket counts, sum (added in the same order), min and max
under the SDK's locks, and to an aligned histogram reservoir the last sampled
value per bucket with its own ending's span, which is what offering every
value in turn leaves there. Other reservoirs get every sampled value offered
in turn, with its ending's context.

So a reader exports exactly what writing each ending at once would have
exported: ``proven()`` checks it on the installed SDK (cumulative and delta
readers, an attribute-key view, histogram and counter exemplars naming each
ending's span, several collections) before the first ending is queued.
Between two collections at most ``PENDING_LIMIT`` endings wait here, with
their contexts. Whatever the grouped write does not cover (a value the SDK
would refuse, an instrument that is not the SDK's, a gap histogram with other
buckets) and any surprise go through the ending's own inline write, in the
ending's context; a surprise also turns queueing off for good.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import deque
from time import time_ns
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from opentelemetry import context as otel_context

from . import sdk_fast_path
from .sdk_fast_path import FastPath, Record

_logger = logging.getLogger(__name__)

PENDING_LIMIT = 64  # endings queued before the ending that fills the queue writes it
FLUSH_INSTRUMENT = "llm.stream.internal.pending_endings"  # observes nothing: its callback is the flush

# (records, gaps, time, context); gaps: (histogram, bounds, monitor, attributes) or None
Ending = Tuple[Sequence[Record], Optional[tuple], int, Any]
# Writes one ending the way it is written without a queue: (records, monitor, gap attributes).
InlineWrite = Callable[[Sequence[Record], Any, Optional[Dict[str, Any]]], None]

_buffers: List["EndingBuffer"] = []  # every open buffer: one collect flushes them all
_state = "unknown"  # unknown | proven | unusable (the self-test's verdict)
_state_lock = threading.Lock()


def flush_pending(_options: Any = None) -> Tuple[()]:
    """Write every queued ending (the observable instrument's callback; also for the bench and tests)."""
    for buffer in list(_buffers):
        buffer.flush()
    return ()


class _Group:
    """What a flush writes into one aggregation: values in ending order, or merged gaps."""

    __slots__ = ("match", "key", "attrs", "values", "gaps")

    def __init__(self, match: Any, key: Any, attrs: Dict[str, Any]) -> None:
        self.match = match
        self.key = key
        self.attrs = attrs
        self.values: List[tuple] = []  # (value, ending, record position, cleaned attributes, sampled)
        self.gaps: Optional[List[Any]] = None  # [counts, total, low, high, [(max gap, ending, _GAPS, cleaned, sampled)]]

    def sources(self) -> List[Tuple[int, int]]:
        """(ending, record position) of every value here; _GAPS for an ending's gaps."""
        out = [(entry[1], entry[2]) for entry in self.values]
        if self.gaps is not None:
            out.extend((entry[1], entry[2]) for entry in self.gaps[4])
        return out


class EndingBuffer:
    """The queue of one ``Instruments``, and its grouped write."""

    def __init__(self, fast: FastPath, meter: Any, inline: InlineWrite) -> None:
        self._fast = fast
        self._inline = inline
        self._pending: Deque[Ending] = deque()
        self.state = "unknown"  # unknown | queueing | off
        try:
            self._gauge = meter.create_observable_gauge(
                FLUSH_INSTRUMENT, callbacks=[flush_pending], description="Observes nothing: writes queued endings."
            )
        except Exception:  # noqa: BLE001 - a meter that cannot: every ending is written at once
            self._gauge = None
            self.state = "off"
        _buffers.append(self)

    def close(self) -> None:
        """Write what is queued and queue nothing more (``uninstrument``)."""
        self.state = "off"
        try:
            _buffers.remove(self)
        except ValueError:
            pass
        self.flush()

    # --- at the ending -------------------------------------------------------------
    def add(self, records: Sequence[Record], gaps: Optional[tuple]) -> bool:
        """Queue an ending; False: not queued, the caller writes it now."""
        if self.state != "queueing" and not (self.state == "unknown" and self._verify(records)):
            return False
        pending = self._pending
        pending.append((records, gaps, time_ns(), otel_context.get_current()))
        if len(pending) >= PENDING_LIMIT:
            self.flush()
        return True

    def _verify(self, records: Sequence[Record]) -> bool:
        """Queue only where a collect of the instruments' own provider runs ``flush_pending`` first."""
        sdk = self._fast._sdk or sdk_fast_path._sdk
        if sdk is None or self._fast.broken or not proven():
            self.state = "off"
            return False
        gauge = sdk_fast_path.sdk_instrument(self._gauge)
        if gauge is None:
            return False  # no SDK provider yet: ask again at the next ending
        consumer = getattr(gauge, "_measurement_consumer", None)
        if flush_pending not in getattr(gauge, "_callbacks", ()) or consumer is None:
            self.state = "off"
            return False
        for instrument, _value, _attributes, _is_counter in records:
            target = self._fast._target(sdk, instrument)
            if target.real is not None and target.consumer is not consumer:
                self.state = "off"
                return False
        if type(consumer._sdk_config.exemplar_filter) not in sdk["context_filters"]:
            self.state = "off"  # a filter that may read the value or the time: ask it at the ending
            return False
        self.state = "queueing"
        return True

    # --- the grouped write ---------------------------------------------------------
    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        endings: List[Ending] = []
        pop = pending.popleft  # atomic: concurrent flushes take distinct endings
        try:
            while True:
                endings.append(pop())
        except IndexError:
            pass
        fast = self._fast
        sdk = fast._sdk or sdk_fast_path._sdk
        groups: Dict[Tuple[int, Any], _Group] = {}
        rest: Dict[int, Tuple[List[Record], Optional[tuple]]] = {}
        try:
            if sdk is None or fast.broken:
                raise RuntimeError("the fast path is off")
            _group(sdk, fast, endings, groups, rest)
        except Exception:  # noqa: BLE001 - nothing written yet: each ending inline
            self._off(fast, sdk is not None and not fast.broken)
            for ending in endings:
                self._write_inline(ending, list(ending[0]), ending[1])
            return
        written: set = set()  # (ending, record position or GAPS) written into one aggregation at least
        ids: Dict[int, Any] = {}
        failed: List[_Group] = []
        for group in groups.values():
            if not group.values and group.gaps is None:
                continue  # planned, but its values went inline: no empty point
            if failed:
                failed.append(group)
                continue
            try:
                aggregation = _write_group(sdk, group, endings)
            except Exception:  # noqa: BLE001 - this group and the rest: inline, unless written elsewhere
                self._off(fast, True)
                failed.append(group)
                continue
            written.update(group.sources())
            try:
                _offer_group(sdk, aggregation, group, endings, ids)
            except Exception:  # noqa: BLE001 - counted already: only exemplars are lost
                self._off(fast, True)
        for group in failed:
            for source in group.sources():
                if source not in written:
                    written.add(source)
                    _redo(source, endings, rest)
        for index, (records, gaps) in sorted(rest.items()):
            self._write_inline(endings[index], records, gaps)

    def _off(self, fast: FastPath, surprise: bool) -> None:
        self.state = "off"
        if surprise:
            fast._fail()

    def _write_inline(self, ending: Ending, records: List[Record], gaps: Optional[tuple]) -> None:
        """One ending the way it is written without a queue, in its own context."""
        if not records and gaps is None:
            return
        token = otel_context.attach(ending[3])
        try:
            if gaps is None:
                self._inline(records, None, None)
            else:
                self._inline(records, gaps[2], gaps[3])
        finally:
            otel_context.detach(token)


_GAPS = -1  # the position of an ending's gaps among its sources


def _group(
    sdk: Dict[str, Any],
    fast: FastPath,
    endings: List[Ending],
    groups: Dict[Tuple[int, Any], _Group],
    rest: Dict[int, Tuple[List[Record], Optional[tuple]]],
) -> None:
    """Sort every value into the group of the aggregation it lands in; the rest into ``rest``.

    Endings of one shape (the same instruments with the same attribute dicts, as
    ``record_metrics`` interns them) share a plan, resolved once per flush: per
    ending what is left is a look-up, the filter's answer and an append per value."""
    plans: Dict[tuple, List[Any]] = {}
    enabled: Dict[int, bool] = {}
    answers: Dict[Tuple[int, int], bool] = {}
    for index, (records, gaps, now, context) in enumerate(endings):
        shape = tuple([(id(record[0]), id(record[2])) for record in records])
        plan = plans.get(shape)
        if plan is None:
            plan = plans[shape] = _plan(sdk, fast, records, groups, enabled)
        sampled: Any = None
        for position, step in enumerate(plan):
            record = records[position]
            value = record[1]
            if step is None or type(value) not in (int, float) or not (0 <= value < math.inf):
                rest.setdefault(index, ([], None))[0].append(record)  # the public API decides (and warns)
                continue
            target, cleaned, targets_groups = step
            if not targets_groups:
                continue  # a disabled meter, or every view drops it: record() would drop it too
            if sampled is None:
                sampled = _sampled(answers, target, index, value, now, cleaned, context)
            entry = (value, index, position, cleaned, sampled)
            for group in targets_groups:
                group.values.append(entry)
        if gaps is not None:
            _group_gaps(sdk, fast, index, gaps, now, context, groups, rest, enabled, answers)


def _plan(
    sdk: Dict[str, Any], fast: FastPath, records: Sequence[Record], groups: Dict[Tuple[int, Any], _Group], enabled: Dict[int, bool]
) -> List[Any]:
    """Per record: None (written inline), or (target, cleaned attributes, the groups its value goes to)."""
    plan: List[Any] = []
    for instrument, _value, attributes, _is_counter in records:
        target = fast._target(sdk, instrument)
        if not target.usable:
            plan.append(None)
            continue
        real = target.real
        attribute_set = fast._known(sdk, real, attributes)
        into: List[_Group] = []
        if _enabled(enabled, real):
            for match, keys in target.matches:
                attrs, key = attribute_set.for_view(sdk, keys)
                group = groups.get((id(match), key))
                if group is None:
                    group = groups[(id(match), key)] = _Group(match, key, attrs)
                into.append(group)
        plan.append((target, attribute_set.cleaned, into))
    return plan


def _group_gaps(
    sdk: Dict[str, Any],
    fast: FastPath,
    index: int,
    gaps: tuple,
    now: int,
    context: Any,
    groups: Dict[Tuple[int, Any], _Group],
    rest: Dict[int, Tuple[List[Record], Optional[tuple]]],
    enabled: Dict[int, bool],
    answers: Dict[Tuple[int, int], bool],
) -> None:
    """An ending's gaps into the group of their aggregation (what ``FastPath.merge_gaps`` merges)."""
    histogram, bounds, monitor, attributes = gaps
    if monitor.gaps < 1:
        return
    target = fast._target(sdk, histogram)
    real = target.real
    if real is None or isinstance(real, sdk["NoOp"]) or (target.usable and not target.matches):
        return  # nothing would record them
    if not target.usable or not target.mergeable or target.bounds != bounds:
        rest[index] = (rest.get(index, ([], None))[0], gaps)  # the public API, one record() per gap
        return
    if not _enabled(enabled, real):
        return
    attribute_set = fast._known(sdk, real, attributes)
    cleaned = attribute_set.cleaned
    high = monitor.gap_max
    sampled = _sampled(answers, target, index, high, now, cleaned, context)
    counts, total, low = monitor.gap_counts, monitor.gap_total, monitor.gap_min
    for match, keys in target.matches:
        attrs, key = attribute_set.for_view(sdk, keys)
        group = groups.get((id(match), key))
        if group is None:
            group = groups[(id(match), key)] = _Group(match, key, attrs)
        merged = group.gaps
        if merged is None:
            group.gaps = [list(counts), total, low, high, [(high, index, _GAPS, cleaned, sampled)]]
        else:
            merged[0] = [a + b for a, b in zip(merged[0], counts)]
            merged[1] += total
            merged[2] = min(merged[2], low)
            merged[3] = max(merged[3], high)
            merged[4].append((high, index, _GAPS, cleaned, sampled))


def _enabled(cache: Dict[int, bool], real: Any) -> bool:
    found = cache.get(id(real))
    if found is None:
        found = cache[id(real)] = bool(real._is_enabled())
    return found


def _sampled(answers: Dict[Tuple[int, int], bool], target: Any, index: int, value: float, now: int, cleaned: Any, context: Any) -> bool:
    """The exemplar filter's answer; a context-only filter (all that queue, see ``_verify``) asked once per ending."""
    exemplar_filter = target.consumer._sdk_config.exemplar_filter
    key = (id(exemplar_filter), index)
    found = answers.get(key)
    if found is None:
        found = answers[key] = bool(exemplar_filter.should_sample(value, now, cleaned, context))
    return found


def _write_group(sdk: Dict[str, Any], group: _Group, endings: List[Ending]) -> Any:
    """One aggregation's values and gaps, counted as their ``record()`` calls in ending order
    would count them (exemplars: ``_offer_group``). Returns the aggregation."""
    match = group.match
    with match._lock:  # collect() of a delta reader swaps the aggregations under it
        aggregation = match._attributes_aggregation.get(group.key)
        if aggregation is None:
            aggregation = match._get_or_create_aggregation(group.key, dict(group.attrs))
        kind = type(aggregation)
        if kind is sdk["Explicit"]:
            _add_to_histogram(aggregation, group.values, group.gaps)
        elif kind is sdk["Sum"] and group.gaps is None:
            with aggregation._lock:
                total = 0 if aggregation._value is None else aggregation._value
                for value, _index, _position, _cleaned, _sampled in group.values:
                    total = total + value
                aggregation._value = total
        else:
            raise TypeError(f"not an aggregation the grouped write knows: {kind.__name__}")
    return aggregation


def _add_to_histogram(aggregation: Any, values: List[tuple], gaps: Optional[List[Any]]) -> None:
    boundaries = aggregation._boundaries
    with aggregation._lock:
        counts = aggregation._value
        if counts is None:
            counts = aggregation._get_empty_bucket_counts()
        if gaps is not None and len(gaps[0]) != len(counts):
            raise ValueError("gap buckets of other bounds")
        total = aggregation._sum
        record_min_max = aggregation._record_min_max
        low, high = aggregation._min, aggregation._max
        for value, _index, _position, _cleaned, _sampled in values:
            total += value
            if value < low:
                low = value
            if value > high:
                high = value
            counts[bisect_left(boundaries, value)] += 1
        if gaps is not None:
            counts = [a + b for a, b in zip(counts, gaps[0])]
            total += gaps[1]
            if gaps[2] < low:
                low = gaps[2]
            if gaps[3] > high:
                high = gaps[3]
        aggregation._value = counts
        aggregation._sum = total
        if record_min_max:
            aggregation._min, aggregation._max = low, high


def _offer_group(sdk: Dict[str, Any], aggregation: Any, group: _Group, endings: List[Ending], ids: Dict[int, Any]) -> None:
    """Every sampled value offered in turn, with its ending's time and context; to an aligned
    histogram reservoir only each bucket's last one, which is all that sequential offers leave."""
    candidates = group.values if group.gaps is None else group.values + group.gaps[4]
    reservoir = aggregation._reservoir
    if type(reservoir) is sdk["Aligned"]:
        boundaries = reservoir._boundaries
        last: Dict[int, list] = {}
        for value, index, _position, cleaned, sampled in candidates:
            if not sampled:
                continue
            span_ids = ids.get(index, _GAPS)
            if span_ids is _GAPS:
                span_ids = ids[index] = sdk["span_ids"](endings[index][3])
            bucket = bisect_left(boundaries, value)
            before = last.get(bucket)
            if span_ids is None and before is not None:
                span_ids = before[3]  # an offer without a span keeps the bucket's ids
            last[bucket] = [value, index, cleaned, span_ids]
        for value, index, cleaned, span_ids in last.values():
            ending = endings[index]
            sdk_fast_path._offer(sdk, reservoir, value, ending[2], cleaned, ending[3], span_ids)
        return
    for value, index, _position, cleaned, sampled in candidates:
        if sampled:
            ending = endings[index]
            reservoir.offer(value, ending[2], cleaned, ending[3])


def _redo(source: Tuple[int, int], endings: List[Ending], rest: Dict[int, Tuple[List[Record], Optional[tuple]]]) -> None:
    """A value (or an ending's gaps) no group wrote: back to its ending, for the inline write."""
    index, position = source
    records, gaps = rest.get(index, ([], None))
    if position == _GAPS:
        gaps = endings[index][1]
    else:
        records.append(endings[index][0][position])
    rest[index] = (records, gaps)


# --------------------------------------------------------------------------- self-test


def proven() -> bool:
    """Self-test queueing once per process (after the fast path's own self-tests)."""
    global _state
    if _state != "unknown":
        return _state == "proven"
    with _state_lock:
        if _state == "unknown":
            ok = False
            try:
                ok = sdk_fast_path.proven() and _self_test(sdk_fast_path._sdk)
            except Exception:  # noqa: BLE001 - another SDK: every ending written at once
                _logger.debug("llm_stream_otel: queued endings unavailable", exc_info=True)
            _state = "proven" if ok else "unusable"
            _logger.debug("llm_stream_otel: queued endings %s", _state)
    return _state == "proven"


def _self_test(sdk: Dict[str, Any]) -> bool:
    """Prove that queued endings export what endings written at once export, collection by collection."""
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.trace import TracerProvider

    from .. import semconv as t

    tracer = TracerProvider().get_tracer("llm_stream_otel.selftest")
    spans = [tracer.start_span("a"), tracer.start_span("b")]
    span_ids = [span.get_span_context().span_id for span in spans]
    full = {"a": "x", "n": 1, "flag": True}
    other = {"a": "y", "n": 2, "flag": False}
    bounds = tuple(t.SECONDS_BUCKETS)
    gap_batches = ([0.004, 0.02, 0.5, 3.0], [0.03, 0.0001], [0.7, 0.011, 0.011])
    endings = [  # (span, [(instrument, value, attributes)], gaps or None)
        (0, [("h", 0.004, full), ("h", 3.0, other), ("c", 1, full), ("k", 0.5, full)], 0),
        (1, [("h", 0.2, full), ("c", 1, full), ("c", 2, other), ("k", 0.02, other)], 1),
        (0, [("h", 0.0, full), ("k", 7.0, full), ("c", 1, full)], 2),
        (1, [("h", 0.3, full), ("h", 0.004, full)], None),
    ]
    rounds = [endings, endings[1:3], endings[::-1]]

    def run(queued: bool) -> List[Any]:
        readers = sdk_fast_path._readers()
        views = [View(instrument_name="selftest.keys", attribute_keys={"a"})]
        provider = MeterProvider(metric_readers=readers, views=views, shutdown_on_exit=False)
        try:
            meter = provider.get_meter("llm_stream_otel.selftest")
            instruments = {
                "h": (meter.create_histogram("selftest.h", unit="s", explicit_bucket_boundaries_advisory=bounds), False),
                "k": (meter.create_histogram("selftest.keys", unit="s"), False),
                "c": (meter.create_counter("selftest.c"), True),
            }
            gaps_histogram = meter.create_histogram("selftest.gaps", unit="s", explicit_bucket_boundaries_advisory=bounds)
            fast = FastPath(sdk)

            def inline(records: Sequence[Record], monitor: Any, attributes: Any) -> None:
                for instrument, value, attrs, is_counter in records:
                    (instrument.add if is_counter else instrument.record)(value, attrs)
                if monitor is not None:
                    for gap in monitor.values:
                        gaps_histogram.record(gap, attributes)

            buffer = EndingBuffer(fast, meter, inline) if queued else None
            points = []
            try:
                for batch in rounds:
                    for span, values, gap_index in batch:
                        records = [(instruments[n][0], v, a, instruments[n][1]) for n, v, a in values]
                        gaps = None
                        if gap_index is not None:
                            monitor = sdk_fast_path._Gaps(gap_batches[gap_index], bounds)
                            monitor.values = gap_batches[gap_index]
                            gaps = (gaps_histogram, bounds, monitor, full)
                        token = otel_context.attach(trace.set_span_in_context(spans[span]))
                        try:
                            if buffer is None:
                                inline(records, None if gaps is None else gaps[2], full)
                            elif not buffer.add(records, gaps):
                                return []
                        finally:
                            otel_context.detach(token)
                    if buffer is not None and len(buffer._pending) != len(batch):
                        return []  # queued, not written yet: the collect below must write them
                    for reader in readers:
                        points.append(_points(reader, span_ids))
                if buffer is not None and (fast.broken or buffer.state != "queueing"):
                    return []
            finally:
                if buffer is not None:
                    buffer.close()
            return points
        finally:
            provider.shutdown()

    global _state
    saved, _state = _state, "proven"  # run() queues through the path under test
    try:
        queued = run(True)
        public = run(False)
    finally:
        _state = saved
        for span in spans:
            span.end()
    return bool(queued) and queued == public


def _points(reader: Any, span_ids: Sequence[int]) -> List[tuple]:
    """Comparable points with their exemplars: every histogram exemplar (but the gap histogram's,
    one per stream by design); of a counter's, how many and whether each names one of ``span_ids``
    (which one is the reservoir's random draw)."""
    data = reader.get_metrics_data()
    out = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for p in metric.data.data_points:
                    is_histogram = hasattr(p, "bucket_counts")
                    found = tuple(getattr(p, "exemplars", ()) or ())
                    exemplars: tuple = ()
                    if not is_histogram:
                        exemplars = (len(found), all(e.span_id in span_ids for e in found))
                    elif metric.name != "selftest.gaps":
                        exemplars = tuple(
                            (e.value, e.span_id, e.trace_id, tuple(sorted(dict(e.filtered_attributes or {}).items())))
                            for e in found
                        )
                    out.append(
                        (
                            metric.name,
                            tuple(sorted(dict(p.attributes).items())),
                            p.count if is_histogram else 1,
                            round(p.sum if is_histogram else p.value, 9),
                            tuple(p.bucket_counts) if is_histogram else (),
                            p.min if is_histogram else None,
                            p.max if is_histogram else None,
                            exemplars,
                        )
                    )
    return sorted(out, key=repr)
