"""Create the metric instruments of design.md from a meter.

The gap histogram (one value per inter-chunk gap) is recorded once per
stream by ``histogram_merge.GapRecorder``: see there for why and how.
"""

from __future__ import annotations

from typing import Optional, Sequence

from opentelemetry.metrics import Counter, Histogram, Meter

from .. import semconv as t
from .histogram_merge import GapRecorder


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

    def __init__(self, meter: Meter, metrics_fast_path: bool = True) -> None:
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
        self.gaps = GapRecorder(self.time_per_output_chunk, t.SECONDS_BUCKETS, metrics_fast_path)
        self.idle_before_end = _histogram(meter, t.METRIC_IDLE_BEFORE_END, t.IDLE_BEFORE_END_BUCKETS)
