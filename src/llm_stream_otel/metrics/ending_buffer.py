"""Stream endings written into the SDK's aggregations many at once, when a reader collects.

Why: even on the fast path, writing one ending costs about 175,000
instructions (callgrind, openai 1.x): six values, each looked up, written
under two locks and offered to an exemplar reservoir, then the gap merge.
Most of that is per-value bookkeeping that repeats, stream after stream, for
the same few aggregations. So an ending only queues what it would write
(``put``: its records, its gaps, the time and its context); the queue is
written (``flush``) when any reader collects, by an observable instrument's
callback, which the SDK runs before it collects the synchronous instruments,
and whenever it holds ``PENDING_LIMIT`` endings. A flush groups the values by
the aggregation they land in (instrument, view, attribute key) and writes
each group once: bucket counts, sum (added in the same order), min and max
under the SDK's locks, and to an aligned histogram reservoir the last sampled
value per bucket with its own ending's span, which is what offering every
value in turn leaves there. A simple fixed-size reservoir (the counters')
gets the winners of the draws its own offers would make, any other reservoir
every sampled value offered in turn, with its ending's context. A flush of
``INLINE_FLUSH`` endings or fewer (rare streams: a collect finds one or two)
writes each the way it is written without a queue, in its own context and at
its own time: there the grouping's planning costs more than it saves.

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
import random
import threading
from bisect import bisect_left
from collections import deque
from functools import partial, reduce
from itertools import chain, compress, repeat
from operator import add, attrgetter, itemgetter
from time import time_ns
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from opentelemetry import context as otel_context

from . import sdk_fast_path
from .sdk_fast_path import FastPath, Record

_logger = logging.getLogger(__name__)

PENDING_LIMIT = 64  # endings queued before the ending that fills the queue writes it
# A flush of this many endings or fewer writes each at once (in its own context, with its own
# time): the grouped write's planning costs about as much as writing four endings one by one.
INLINE_FLUSH = 4
FLUSH_INSTRUMENT = "llm.stream.internal.pending_endings"  # observes nothing: its callback is the flush

# (records, gaps, time, context, shape); gaps: (histogram, bounds, monitor, attributes) or None
Ending = Tuple[Sequence[Record], Optional[tuple], int, Any, Any]
# Writes one ending the way it is written without a queue: (records, monitor, gap attributes, time).
InlineWrite = Callable[[Sequence[Record], Any, Optional[Dict[str, Any]], Optional[int]], None]

# The buffers with endings waiting: one collect flushes them all. Only these are held, so an
# ``Instruments`` that is dropped without ``close()`` is freed once its queue is written.
_waiting: Set["EndingBuffer"] = set()
_state = "unknown"  # unknown | proven | unusable (the self-test's verdict)
_state_lock = threading.Lock()


def flush_pending(_options: Any = None) -> Tuple[()]:
    """Write every queued ending (the observable instrument's callback; also for the bench and tests)."""
    for buffer in list(_waiting):
        buffer.flush()
    return ()


class _Column:
    """One record position's values across the endings of one shape (or their gaps), in ending order."""

    __slots__ = ("indices", "position", "values", "cleaned", "sampled", "monitors")

    def __init__(self, indices: List[int], position: int, values: Sequence[float], cleaned: Any, sampled: List[bool], monitors: Optional[List[Any]] = None) -> None:
        self.indices = indices
        self.position = position  # _GAPS for gaps
        self.values = values  # for gaps: each ending's largest gap (its exemplar candidate)
        self.cleaned = cleaned
        self.sampled = sampled
        self.monitors = monitors


class _Group:
    """What a flush writes into one aggregation: columns of values, or of gaps."""

    __slots__ = ("match", "key", "attrs", "columns", "_ordered", "buckets")

    def __init__(self, match: Any, key: Any, attrs: Dict[str, Any]) -> None:
        self.match = match
        self.key = key
        self.attrs = attrs
        self.columns: List[_Column] = []
        self._ordered: Any = None
        # (the histogram's boundaries, each ordered value's bucket): found once, for the counts and the exemplars
        self.buckets: Optional[Tuple[tuple, List[int]]] = None

    def sources(self) -> List[Tuple[int, int]]:
        """(ending, record position) of every value here; _GAPS for an ending's gaps."""
        return [(index, column.position) for column in self.columns for index in column.indices]

    def ordered(self) -> Tuple[Sequence[int], Sequence[float], Sequence[Any], Sequence[bool]]:
        """Indices, values, cleaned attributes and filter answers, in the order ``record()`` calls would
        come (worked out once: the write and the exemplar offers both read it, after the columns are final)."""
        found = self._ordered
        if found is None:
            found = self._ordered = self._order()
        return found

    def _order(self) -> Tuple[Sequence[int], Sequence[float], Sequence[Any], Sequence[bool]]:
        columns = self.columns
        if len(columns) == 1:
            column = columns[0]
            return column.indices, column.values, [column.cleaned] * len(column.indices), column.sampled
        rows = sorted(
            chain.from_iterable(
                zip(c.indices, repeat(c.position), c.values, repeat(c.cleaned), c.sampled) for c in columns
            ),
            key=_order,
        )
        indices, _positions, values, cleaned, sampled = zip(*rows)
        return indices, values, cleaned, sampled


class EndingBuffer:
    """The queue of one ``Instruments``, and its grouped write."""

    def __init__(self, fast: FastPath, meter: Any, inline: InlineWrite, inline_flush: int = INLINE_FLUSH) -> None:
        self._fast = fast
        self._inline = inline
        self._inline_flush = inline_flush  # (the self-test sets 0: it proves the grouped write)
        self._pending: Deque[Ending] = deque()
        self._consumer: Any = None  # the SDK's measurement consumer of the instruments (``_verify``)
        self.state = "unknown"  # unknown | queueing | off
        try:
            self._gauge = meter.create_observable_gauge(
                FLUSH_INSTRUMENT, callbacks=[flush_pending], description="Observes nothing: writes queued endings."
            )
        except Exception:  # noqa: BLE001 - a meter that cannot: every ending is written at once
            self._gauge = None
            self.state = "off"

    def close(self) -> None:
        """Write what is queued and queue nothing more (``uninstrument``)."""
        self.state = "off"
        self.flush()

    # --- at the ending -------------------------------------------------------------
    def put(self, records: Sequence[Record], gaps: Optional[tuple], shape: Any = None) -> bool:
        """Queue an ending; False: not queued, the caller writes it now (``shape``: see ``Instruments.write``)."""
        if self.state != "queueing" and not (self.state == "unknown" and self._verify(records)):
            return False
        pending = self._pending
        pending.append((records, gaps, time_ns(), otel_context.get_current(), shape))
        _waiting.add(self)  # after the append: a flush that un-holds the buffer looks again (``flush``)
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
        self._consumer = consumer
        self.state = "queueing"
        return True

    # --- the grouped write ---------------------------------------------------------
    def flush(self) -> None:
        pending = self._pending
        endings: List[Ending] = []
        pop = pending.popleft  # atomic: concurrent flushes take distinct endings
        try:
            while True:
                endings.append(pop())
        except IndexError:
            pass
        _waiting.discard(self)
        if pending:  # an ending queued since: it stays held
            _waiting.add(self)
        if not endings:
            return
        if len(endings) <= self._inline_flush:
            for ending in endings:
                self._write_inline(ending, ending[0], ending[1])
            return
        fast = self._fast
        sdk = fast._sdk or sdk_fast_path._sdk
        groups: Dict[Tuple[int, Any], _Group] = {}
        rest: Dict[int, Tuple[List[Record], Optional[tuple]]] = {}
        try:
            if sdk is None or fast.broken:
                raise RuntimeError("the fast path is off")
            _group(sdk, fast, endings, groups, rest, self._consumer._sdk_config.exemplar_filter)
        except Exception:  # noqa: BLE001 - nothing written yet: each ending inline
            self._off(fast, sdk is not None and not fast.broken)
            for ending in endings:
                self._write_inline(ending, list(ending[0]), ending[1])
            return
        done: List[_Group] = []  # written (their sources are worked out only if a group fails)
        ids: Dict[int, Any] = {}
        failed: List[_Group] = []
        for group in groups.values():
            if not group.columns:
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
            done.append(group)
            try:
                _offer_group(sdk, aggregation, group, endings, ids)
            except Exception:  # noqa: BLE001 - counted already: only exemplars are lost
                self._off(fast, True)
        # (ending, record position or GAPS) written into one aggregation at least: not again
        written = set(chain.from_iterable(group.sources() for group in done)) if failed else set()
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

    def _write_inline(self, ending: Ending, records: Sequence[Record], gaps: Optional[tuple]) -> None:
        """One ending the way it is written without a queue, in its own context, at its own time."""
        if not records and gaps is None:
            return
        token = otel_context.attach(ending[3])
        try:
            if gaps is None:
                self._inline(records, None, None, ending[2])
            else:
                self._inline(records, gaps[2], gaps[3], ending[2])
        finally:
            otel_context.detach(token)


try:  # the C loop behind collections.Counter: a dict of counts, without Counter's Python set-up
    from _collections import _count_elements
except ImportError:  # pragma: no cover - another interpreter
    def _count_elements(mapping: Dict[Any, int], iterable: Any) -> None:
        for element in iterable:
            mapping[element] = mapping.get(element, 0) + 1

_GAPS = -1  # the position of an ending's gaps among its sources
_NUMBERS = frozenset((int, float))
_value_of = itemgetter(1)
_shape_of = itemgetter(0, 2)
_order = itemgetter(0, 1)
_gap_counts = attrgetter("gap_counts")
_gap_total = attrgetter("gap_total")
_gap_min = attrgetter("gap_min")
_gap_max = attrgetter("gap_max")


def _valid(values: Tuple[Any, ...]) -> bool:
    """Every value an int or a float in [0, inf) (what the fast path writes), checked in C."""
    if not _NUMBERS.issuperset(map(type, values)):
        return False
    if not values:
        return True
    try:
        return min(values) >= 0 and math.fsum(values) < math.inf  # fsum: a NaN anywhere is NaN
    except OverflowError:
        return False


def _group(
    sdk: Dict[str, Any],
    fast: FastPath,
    endings: List[Ending],
    groups: Dict[Tuple[int, Any], _Group],
    rest: Dict[int, Tuple[List[Record], Optional[tuple]]],
    exemplar_filter: Any,
) -> None:
    """Sort the endings' values into columns, and the columns into the groups of their aggregations.

    Endings of one shape (the same instruments with the same attribute dicts, as
    ``record_metrics`` interns them) share a plan, resolved once per flush; per
    ending there are only C-level reads and one question to the exemplar filter
    (context-only, see ``_verify``: its answer holds for every value of the ending)."""
    shapes: Dict[tuple, Tuple[Sequence[Record], List[int], List[tuple], List[bool]]] = {}
    gap_rows: Dict[Tuple[int, int, tuple], Tuple[tuple, List[int], List[Any], List[bool]]] = {}
    should_sample = exemplar_filter.should_sample
    trace_sampled = sdk["trace_sampled"] if type(exemplar_filter) is sdk["TraceBased"] else None
    for index, (records, gaps, now, context, shape) in enumerate(endings):
        if trace_sampled is not None:  # the SDK's default filter, inlined
            sampled = trace_sampled(context)
        else:
            sampled = bool(should_sample(0, now, None, context))
        if records:
            if shape is None:  # the instruments and attribute dicts themselves (alive: the ending holds them)
                shape = tuple(map(id, chain.from_iterable(map(_shape_of, records))))
            rows = shapes.get(shape)
            if rows is None:
                rows = shapes[shape] = (records, [], [], [])
            rows[1].append(index)
            rows[2].append(tuple(map(_value_of, records)))  # checked column by column (_valid)
            rows[3].append(sampled)
        if gaps is not None and any(gaps[2].gap_counts):  # (``monitor.gaps >= 1``: counts are >= 0)
            key = (id(gaps[0]), id(gaps[3]), id(gaps[1]))
            rows = gap_rows.get(key)
            if rows is None:
                rows = gap_rows[key] = (gaps, [], [], [])
            rows[1].append(index)
            rows[2].append(gaps[2])
            rows[3].append(sampled)
    enabled: Dict[int, bool] = {}
    for records, indices, value_rows, sampled in shapes.values():
        columns = list(zip(*value_rows))
        for position, step in enumerate(_plan(sdk, fast, records, enabled)):
            if step is None:
                for index in indices:
                    rest.setdefault(index, ([], None))[0].append(endings[index][0][position])
                continue
            cleaned, views = step
            column = _Column(indices, position, columns[position], cleaned, sampled)
            if not _valid(column.values):
                column = _valid_part(column, endings, rest)
                if column is None:
                    continue
            for match, attrs, key in views:
                _group_of(groups, match, key, attrs).columns.append(column)
    for (gaps, indices, monitors, sampled) in gap_rows.values():
        _group_gaps(sdk, fast, gaps, indices, monitors, sampled, groups, rest, enabled)


def _valid_part(column: _Column, endings: List[Ending], rest: Dict[int, Tuple[List[Record], Optional[tuple]]]) -> Optional[_Column]:
    """The column without the values the SDK would refuse: those go to the public API (which warns)."""
    keep = [_valid((value,)) for value in column.values]
    for index, good in zip(column.indices, keep):
        if not good:
            rest.setdefault(index, ([], None))[0].append(endings[index][0][column.position])
    if not any(keep):
        return None
    return _Column(
        list(compress(column.indices, keep)),
        column.position,
        list(compress(column.values, keep)),
        column.cleaned,
        list(compress(column.sampled, keep)),
    )


def _group_of(groups: Dict[Tuple[int, Any], _Group], match: Any, key: Any, attrs: Dict[str, Any]) -> _Group:
    group = groups.get((id(match), key))
    if group is None:
        group = groups[(id(match), key)] = _Group(match, key, attrs)
    return group


def _plan(sdk: Dict[str, Any], fast: FastPath, records: Sequence[Record], enabled: Dict[int, bool]) -> List[Any]:
    """Per record: None (written inline), or (cleaned attributes, [(match, view attributes, key)])."""
    plan: List[Any] = []
    for instrument, _value, attributes, _is_counter in records:
        target = fast._target(sdk, instrument)
        if not target.usable:
            plan.append(None)
            continue
        real = target.real
        attribute_set = fast._known(sdk, real, attributes)
        views = []
        if _enabled(enabled, real):  # else a disabled meter: record() would drop it too
            for match, keys in target.matches:
                attrs, key = attribute_set.for_view(sdk, keys)
                views.append((match, attrs, key))
        plan.append((attribute_set.cleaned, views))
    return plan


def _group_gaps(
    sdk: Dict[str, Any],
    fast: FastPath,
    gaps: tuple,
    indices: List[int],
    monitors: List[Any],
    sampled: List[bool],
    groups: Dict[Tuple[int, Any], _Group],
    rest: Dict[int, Tuple[List[Record], Optional[tuple]]],
    enabled: Dict[int, bool],
) -> None:
    """Endings' gaps into the group of their aggregation (what ``FastPath.merge_gaps`` merges)."""
    histogram, bounds, _monitor, attributes = gaps
    target = fast._target(sdk, histogram)
    real = target.real
    if real is None or isinstance(real, sdk["NoOp"]) or (target.usable and not target.matches):
        return  # nothing would record them
    if not target.usable or not target.mergeable or target.bounds != bounds:
        for index, monitor in zip(indices, monitors):  # the public API, one record() per gap
            rest[index] = (rest.get(index, ([], None))[0], (histogram, bounds, monitor, attributes))
        return
    if not _enabled(enabled, real):
        return
    attribute_set = fast._known(sdk, real, attributes)
    column = _Column(indices, _GAPS, list(map(_gap_max, monitors)), attribute_set.cleaned, sampled, monitors)
    for match, keys in target.matches:
        attrs, key = attribute_set.for_view(sdk, keys)
        _group_of(groups, match, key, attrs).columns.append(column)


def _enabled(cache: Dict[int, bool], real: Any) -> bool:
    """``real._is_enabled()``, asked once per meter config and flush (it reads only that config,
    which the instruments of one meter share, as ``FastPath.write_ending`` relies on too)."""
    config = real._meter_config
    found = cache.get(id(config))
    if found is None:
        found = cache[id(config)] = bool(real._is_enabled())
    return found


def _write_group(sdk: Dict[str, Any], group: _Group, endings: List[Ending]) -> Any:
    """One aggregation's values or gaps, counted as their ``record()`` calls in ending order
    would count them (exemplars: ``_offer_group``). Returns the aggregation."""
    match = group.match
    gap_columns = [column for column in group.columns if column.monitors is not None]
    if gap_columns and len(gap_columns) != len(group.columns):
        raise TypeError("values and gaps in one aggregation")
    with match._lock:  # collect() of a delta reader swaps the aggregations under it
        aggregation = match._attributes_aggregation.get(group.key)
        if aggregation is None:
            aggregation = match._get_or_create_aggregation(group.key, dict(group.attrs))
        kind = type(aggregation)
        if kind is sdk["Explicit"]:
            if gap_columns:
                _merge_gaps(aggregation, group)
            else:
                values = group.ordered()[1]
                boundaries = aggregation._boundaries
                buckets = list(map(bisect_left, repeat(boundaries), values))
                _add_to_histogram(aggregation, values, buckets)
                group.buckets = (boundaries, buckets)
        elif kind is sdk["Sum"] and not gap_columns:
            values = group.ordered()[1]
            with aggregation._lock:
                aggregation._value = reduce(add, values, 0 if aggregation._value is None else aggregation._value)
        else:
            raise TypeError(f"not an aggregation the grouped write knows: {kind.__name__}")
    return aggregation


def _add_to_histogram(aggregation: Any, values: Sequence[float], buckets: Sequence[int]) -> None:
    """Counts, sum (added left to right, as ``+=`` per record), min and max of ``values``, in C
    (``buckets``: each value's, ``bisect_left`` in the aggregation's boundaries, as ``aggregate`` finds it)."""
    counted: Dict[int, int] = {}
    _count_elements(counted, buckets)
    with aggregation._lock:
        counts = aggregation._value
        if counts is None:
            counts = aggregation._value = aggregation._get_empty_bucket_counts()
        for bucket, count in counted.items():
            counts[bucket] += count
        aggregation._sum = reduce(add, values, aggregation._sum)
        if aggregation._record_min_max:
            low, high = min(values), max(values)
            if low < aggregation._min:
                aggregation._min = low
            if high > aggregation._max:
                aggregation._max = high


def _merge_gaps(aggregation: Any, group: _Group) -> None:
    """The endings' merged gaps, stream after stream as ``FastPath.merge_gaps`` merges them."""
    monitors: List[Any] = []
    if len(group.columns) == 1:
        monitors = group.columns[0].monitors
    else:
        rows = sorted(chain.from_iterable(zip(c.indices, c.monitors) for c in group.columns), key=itemgetter(0))
        monitors = [monitor for _index, monitor in rows]
    with aggregation._lock:
        counts = aggregation._value
        if counts is None:
            counts = aggregation._get_empty_bucket_counts()
        every = list(map(_gap_counts, monitors))
        if set(map(len, every)) != {len(counts)}:
            raise ValueError("gap buckets of other bounds")
        aggregation._value = list(map(sum, zip(counts, *every)))  # bucket by bucket, in C (integers: exact)
        aggregation._sum = reduce(add, map(_gap_total, monitors), aggregation._sum)
        if aggregation._record_min_max:
            low, high = min(map(_gap_min, monitors)), max(map(_gap_max, monitors))
            if low < aggregation._min:
                aggregation._min = low
            if high > aggregation._max:
                aggregation._max = high


def _offer_group(sdk: Dict[str, Any], aggregation: Any, group: _Group, endings: List[Ending], ids: Dict[int, Any]) -> None:
    """Every sampled value offered in turn, with its ending's time and context; to an aligned
    histogram reservoir only each bucket's last one, which is all that sequential offers leave
    (a gap column offers each stream's largest gap, as ``FastPath.merge_gaps`` does)."""
    indices, values, cleaned, sampled = group.ordered()
    chosen = list(compress(range(len(indices)), sampled))
    if not chosen:
        return
    reservoir = aggregation._reservoir
    if type(reservoir) is sdk["Aligned"]:
        boundaries = reservoir._boundaries
        found = group.buckets
        if found is not None and tuple(boundaries) == found[0]:  # the buckets the counts were found in
            buckets = found[1] if len(chosen) == len(values) else list(map(found[1].__getitem__, chosen))
        else:
            offered = values if len(chosen) == len(values) else [values[j] for j in chosen]
            buckets = list(map(bisect_left, repeat(boundaries), offered))
        for bucket, j in dict(zip(buckets, chosen)).items():
            index = indices[j]
            span_ids = _span_ids(sdk, ids, endings, index)
            if span_ids is None:  # an offer without a span keeps the bucket's ids: offer them all in turn
                for k, b in zip(chosen, buckets):
                    if b == bucket:
                        ending = endings[indices[k]]
                        sdk_fast_path._offer(sdk, reservoir, values[k], ending[2], cleaned[k], ending[3], sdk["span_ids"](ending[3]))
                continue
            ending = endings[index]
            sdk_fast_path._offer(sdk, reservoir, values[j], ending[2], cleaned[j], ending[3], span_ids)
        return
    if type(reservoir) is sdk["Simple"]:
        _offer_simple(sdk, reservoir, chosen, indices, values, cleaned, endings, ids)
        return
    for j in chosen:
        ending = endings[indices[j]]
        reservoir.offer(values[j], ending[2], cleaned[j], ending[3])


_UNKNOWN = object()


def _span_ids(sdk: Dict[str, Any], ids: Dict[int, Any], endings: List[Ending], index: int) -> Any:
    """The span ids of ending ``index``'s context (None: no span), read once per flush (``ids``)."""
    found = ids.get(index, _UNKNOWN)
    if found is _UNKNOWN:
        found = ids[index] = sdk["span_ids"](endings[index][3])
    return found


def _offer_simple(
    sdk: Dict[str, Any], reservoir: Any, chosen: List[int], indices: Sequence[int], values: Sequence[float],
    cleaned: Sequence[Any], endings: List[Ending], ids: Dict[int, Any],
) -> None:
    """What offering each chosen value in turn to a simple fixed-size reservoir leaves: the same
    draws (its ``_find_bucket_index``: the first ``size`` fill the slots, then value n takes slot
    ``randrange(0, n)`` if that is a slot), and each slot written once, by its last winner."""
    draw = _draw(sdk["reservoirs"].randrange)
    with reservoir._lock:
        size = reservoir._size
        seen = reservoir._measurements_seen
        winners: Dict[int, int] = {}
        for j in chosen:
            if seen < size:
                slot = seen
            else:
                slot = draw(seen + 1)
            seen += 1
            if slot < size:
                winners[slot] = j
        storage = reservoir._reservoir_storage
        writes = []
        for slot, j in winners.items():
            index = indices[j]
            span_ids = _span_ids(sdk, ids, endings, index)
            bucket = storage[slot]
            if span_ids is None or type(bucket) is not sdk["Bucket"]:
                writes = None  # an offer without a span keeps the slot's ids: the reservoir's own offers
                break
            writes.append((bucket, j, index, span_ids))
        if writes is not None:
            reservoir._measurements_seen = seen
            for bucket, j, index, span_ids in writes:
                bucket._ExemplarBucket__value = values[j]
                bucket._ExemplarBucket__time_unix_nano = endings[index][2]
                bucket._ExemplarBucket__attributes = cleaned[j]
                bucket._ExemplarBucket__span_id, bucket._ExemplarBucket__trace_id = span_ids
                bucket._ExemplarBucket__offered = True
            return
    for j in chosen:  # (outside its lock: offer() takes it)
        ending = endings[indices[j]]
        reservoir.offer(values[j], ending[2], cleaned[j], ending[3])


def _draw(randrange: Any) -> Callable[[int], int]:
    """``n -> randrange(0, n)``: the global generator's ``_randbelow(n)`` where ``randrange`` is the
    stdlib's (for a start of 0 and a step of 1 it returns ``0 + self._randbelow(n)``: the same
    draw, without its argument checks), else ``randrange`` itself."""
    owner = getattr(randrange, "__self__", None)
    if (
        type(owner) is random.Random
        and getattr(randrange, "__func__", None) is random.Random.randrange
        and type(owner)._randbelow is random.Random._randbelow
    ):
        return owner._randbelow
    return partial(randrange, 0)


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
    unsampled = trace.NonRecordingSpan(trace.SpanContext(7, 9, False, trace.TraceFlags(0)))
    # sampled spans a and b, an unsampled span, no span at all: which the exemplar filter samples
    contexts = [trace.set_span_in_context(span) for span in (*spans, unsampled)] + [otel_context.Context()]
    full = {"a": "x", "n": 1, "flag": True}
    other = {"a": "y", "n": 2, "flag": False}
    bounds = tuple(t.SECONDS_BUCKETS)
    gap_batches = ([0.004, 0.02, 0.5, 3.0], [0.03, 0.0001], [0.7, 0.011, 0.011])
    endings = [  # (span, [(instrument, value, attributes)], gaps or None)
        (0, [("h", 0.004, full), ("h", 3.0, other), ("c", 1, full), ("k", 0.5, full)], 0),
        (1, [("h", 0.2, full), ("c", 1, full), ("c", 2, other), ("k", 0.02, other)], 1),
        (0, [("h", 0.0, full), ("k", 7.0, full), ("c", 1, full)], 2),
        (1, [("h", 0.3, full), ("h", 0.004, full)], None),
        (2, [("h", 0.05, full), ("c", 1, full)], 1),
        (3, [("h", 0.5, other), ("c", 3, full)], None),
    ]
    rounds = [endings, endings[1:3], endings[::-1], endings[3:]]

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

            def inline(records: Sequence[Record], monitor: Any, attributes: Any, _now: Any = None) -> None:
                for instrument, value, attrs, is_counter in records:
                    (instrument.add if is_counter else instrument.record)(value, attrs)
                if monitor is not None:
                    for gap in monitor.values:
                        gaps_histogram.record(gap, attributes)

            buffer = EndingBuffer(fast, meter, inline, inline_flush=0) if queued else None
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
                        token = otel_context.attach(contexts[span])
                        try:
                            if buffer is None:
                                inline(records, None if gaps is None else gaps[2], full)
                            elif not buffer.put(records, gaps):
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
    out = []
    for metric, p in sdk_fast_path.data_points(reader):
        is_histogram = hasattr(p, "bucket_counts")
        found = tuple(getattr(p, "exemplars", ()) or ())
        exemplars: tuple = ()
        if not is_histogram:
            exemplars = (len(found), all(e.span_id in span_ids for e in found))
        elif metric.name != "selftest.gaps":
            exemplars = tuple(
                (e.value, e.span_id, e.trace_id, tuple(sorted(dict(e.filtered_attributes or {}).items()))) for e in found
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
