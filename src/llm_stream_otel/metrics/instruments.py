"""Create the metric instruments of design.md from a meter, and write a stream's ending into them.

The gap histogram (one value per inter-chunk gap) is recorded once per
stream by ``histogram_merge.GapRecorder``: see there for why and how. The
ending's single values (duration, time to first chunk, chunks, token usage,
the counters) go through ``Instruments.write``: queued and written many at
once when a reader collects where ``ending_buffer`` is proven, else in one
pass into the SDK's aggregations where ``sdk_fast_path`` is proven, else
``record()`` / ``add()``.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Sequence

from opentelemetry.metrics import Counter, Histogram, Meter

from .. import semconv as t
from . import ending_buffer
from .histogram_merge import GapRecorder
from .sdk_fast_path import FastPath, Record, proven


def _histogram(meter: Meter, name: str, buckets: Optional[Sequence[float]]) -> Histogram:
    _kind, unit, description = t.METRICS[name]
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api older than 1.23: no advisory buckets
        return meter.create_histogram(name, unit=unit, description=description)


def _counter(meter: Meter, name: str) -> Counter:
    _kind, unit, description = t.METRICS[name]
    return meter.create_counter(name, unit=unit, description=description)


class Instruments:
    """The instruments one instrumentor records into."""

    def __init__(self, meter: Meter, metrics_fast_path: bool = True, queue_endings: bool = True) -> None:
        self.duration = _histogram(meter, t.METRIC_DURATION, t.SECONDS_BUCKETS)
        self.token_usage = _histogram(meter, t.METRIC_TOKEN_USAGE, t.TOKEN_BUCKETS)
        self.time_to_first_chunk = _histogram(meter, t.METRIC_TIME_TO_FIRST_CHUNK, t.SECONDS_BUCKETS)
        self.time_per_output_chunk = _histogram(meter, t.METRIC_TIME_PER_OUTPUT_CHUNK, t.SECONDS_BUCKETS)
        self.chunks = _histogram(meter, t.METRIC_CHUNKS, t.CHUNK_BUCKETS)
        self.stalls = _counter(meter, t.METRIC_STALLS)
        self.outcomes = _counter(meter, t.METRIC_OUTCOMES)
        self.retries = _counter(meter, t.METRIC_RETRIES)
        self.recoveries = _counter(meter, t.METRIC_RECOVERIES)
        self.internal_errors = _counter(meter, t.METRIC_INTERNAL_ERRORS)
        self.idle_before_end = _histogram(meter, t.METRIC_IDLE_BEFORE_END, t.IDLE_BEFORE_END_BUCKETS)
        self.fast_path: Optional[FastPath] = FastPath() if metrics_fast_path else None
        if metrics_fast_path and "opentelemetry.sdk.metrics" in sys.modules:
            proven()  # run the self-tests now rather than at the end of the first stream
            if queue_endings:
                ending_buffer.proven()
        self.gaps = GapRecorder(self.time_per_output_chunk, t.SECONDS_BUCKETS, self.fast_path)
        # ``queue_endings``: False writes every ending at once (the tests of that path).
        self.queue: Optional[ending_buffer.EndingBuffer] = None
        if self.fast_path is not None and queue_endings:
            self.queue = ending_buffer.EndingBuffer(self.fast_path, meter, self.write_now)

    def close(self) -> None:
        """Write the queued endings and queue no more (``uninstrument``)."""
        if self.queue is not None:
            self.queue.close()

    def write(
        self, records: Sequence[Record], monitor: Any = None, gap_attributes: Optional[Dict[str, Any]] = None, shape: Any = None
    ) -> None:
        """Record single values, ``(instrument, value, attributes, is_counter)`` each, then
        (with ``monitor``) the stream's gaps: queued where that is proven, else at once.
        The records' dicts must not change afterwards (ours are interned, read-only).
        ``shape``: a hashable that determines every record's instrument and attribute dict
        (it keeps them alive), if the caller has one: it spares the queue working it out."""
        queue = self.queue
        if queue is not None:
            gaps = None if monitor is None else (self.time_per_output_chunk, self.gaps.bounds, monitor, gap_attributes)
            if queue.put(records, gaps, shape):
                return
        self.write_now(records, monitor, gap_attributes)

    def write_now(
        self, records: Sequence[Record], monitor: Any = None, gap_attributes: Optional[Dict[str, Any]] = None, now: Optional[int] = None
    ) -> None:
        """``write`` without the queue: in one pass on the fast path, else the public API.
        ``now``: the ending's time, for the exemplars, when the queue writes it later (the
        fast path takes it; the public API's record() reads the clock)."""
        fast = self.fast_path
        gaps_done = monitor is None
        if fast is not None and fast.usable():
            gaps = None if monitor is None else (self.time_per_output_chunk, self.gaps.bounds, monitor, gap_attributes)
            records, path = fast.write_ending(records, gaps, now)
            gaps_done = gaps_done or path is not None
        for instrument, value, attributes, is_counter in records:
            if is_counter:
                instrument.add(value, attributes)
            else:
                instrument.record(value, attributes)
        if not gaps_done:
            self.gaps.record_public(monitor, gap_attributes)
