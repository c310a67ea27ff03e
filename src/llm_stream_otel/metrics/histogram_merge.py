"""``GapRecorder``: one stream's inter-chunk gaps into
``gen_ai.client.operation.time_per_output_chunk``, once per stream, and the
guarded merge into the metrics SDK's own aggregation that makes it cheap.

Why a recorder of its own: the contract is one histogram value per gap, i.e.
per chunk, and the OTel SDK's ``Histogram.record`` costs several µs a call
(it cleans and hashes the attribute set on every call): 20,000 chunks would
cost ~0.2 s of CPU, about 10% of the SDK's own cost of reading them. The
monitor therefore aggregates gaps in-stream (a count per bucket, the exact
min and max, and the total) and ``GapRecorder`` hands them to the metrics SDK
once per stream:

- fast path (the OpenTelemetry Python SDK, explicit-bucket aggregation with
  our bucket boundaries, i.e. the default or any view that keeps them): the
  stream's bucket counts, sum, min and max are merged into the SDK's own
  aggregation for the attribute set, under its locks, exactly as N
  ``record()`` calls would have left it; the max gap is offered to the
  exemplar reservoir. This uses private SDK internals, so it is guarded: it is
  enabled only after a self-test has proven, on this SDK version, that it
  exports the same points (count, sum, bucket counts, min, max; cumulative and
  delta) as per-gap ``record()`` calls, and any surprise at run time falls
  back to the public API. Opt out with
  ``OTEL_INSTRUMENTATION_LLM_STREAM_METRICS_FAST_PATH=false``.
- public API otherwise (another SDK, a view with other buckets or another
  aggregation): one ``record()`` per gap from ``StreamMonitor.gap_replay()``,
  so count, sum, min, max and our buckets stay exact.
"""

from __future__ import annotations

import logging
import sys
import threading
from time import time_ns
from typing import Any, Dict, List, Optional, Sequence

from opentelemetry.metrics import Histogram

from .. import semconv as t

_logger = logging.getLogger(__name__)


class GapRecorder:
    """Record a stream's in-stream aggregated gaps into the per-chunk histogram.

    Not an instrument itself (no ``record``/``add``): code that walks the
    instruments of ``Instruments`` skips it.
    """

    def __init__(self, histogram: Histogram, bounds: Sequence[float], fast_path: bool = True) -> None:
        self.histogram = histogram
        self.bounds = tuple(bounds)
        self.fast_path = fast_path
        if fast_path and "opentelemetry.sdk.metrics" in sys.modules:
            _sdk_merge_proven()  # run the self-test now rather than at the end of the first stream

    def record_gaps(self, monitor: Any, attributes: Dict[str, Any]) -> str:
        """Record every gap of a settled monitor; returns the path taken (for tests and the bench)."""
        if monitor.gaps < 1:
            return "none"
        if self.fast_path:
            path = _merge_into_sdk(self.histogram, self.bounds, monitor, attributes)
            if path is not None:
                return path
        histogram = self.histogram
        for value, count in monitor.gap_replay():
            for _ in range(count):
                histogram.record(value, attributes)
        return "api"


# What _merge_into_sdk needs from the SDK, resolved once; None = not usable here.
_sdk: Optional[Dict[str, Any]] = None
_sdk_state = "unknown"  # unknown | proven | unusable
_sdk_lock = threading.Lock()


def _load_sdk() -> Dict[str, Any]:
    from opentelemetry.context import get_current
    from opentelemetry.metrics import NoOpHistogram
    from opentelemetry.sdk.metrics._internal import _view_instrument_match as vim
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
    )
    from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    return {
        "Histogram": _Histogram,
        "NoOpHistogram": NoOpHistogram,
        "Explicit": _ExplicitBucketHistogramAggregation,
        "Drop": _DropAggregation,
        "Measurement": Measurement,
        "hash_attributes": vim._hash_attributes,
        "get_current": get_current,
    }


def _sdk_merge_proven() -> bool:
    """Load the SDK internals and self-test the merge once per process."""
    global _sdk, _sdk_state
    if _sdk_state != "unknown":
        return _sdk_state == "proven"
    with _sdk_lock:
        if _sdk_state == "unknown":
            try:
                sdk = _load_sdk()
                ok = _self_test(sdk)
                if ok:
                    _sdk = sdk
            except Exception:  # noqa: BLE001 - another SDK version: use the public API
                _logger.debug("llm_stream_otel: metrics fast path unavailable", exc_info=True)
                ok = False
            _sdk_state = "proven" if ok else "unusable"
            _logger.debug("llm_stream_otel: metrics fast path %s", _sdk_state)
    return _sdk_state == "proven"


def _sdk_instrument(histogram: Any) -> Any:
    """The SDK instrument behind an API object (``_ProxyHistogram`` before a provider is set)."""
    while hasattr(histogram, "_real_instrument"):
        real = histogram._real_instrument
        if real is None:
            return None  # the global provider is not set yet: record() would be a no-op
        histogram = real
    return histogram


def _merge_into_sdk(histogram: Any, bounds: tuple, monitor: Any, attributes: Dict[str, Any]) -> Optional[str]:
    """Merge the stream's gaps into the SDK aggregations; None if the public API must be used."""
    if not _sdk_merge_proven():
        return None
    assert _sdk is not None
    return _merge(_sdk, histogram, bounds, monitor, attributes)


def _merge(sdk: Dict[str, Any], histogram: Any, bounds: tuple, monitor: Any, attributes: Dict[str, Any]) -> Optional[str]:
    """The merge itself. Nothing is mutated until every view of the instrument is
    known to be mergeable, so a None return never leaves a partial merge behind."""
    try:
        real = _sdk_instrument(histogram)
        if real is None or isinstance(real, sdk["NoOpHistogram"]):
            return "noop"
        if type(real) is not sdk["Histogram"]:
            return None
        if not real._is_enabled():
            return "disabled"
        consumer = real._measurement_consumer
        matches = []
        for storage in list(consumer._reader_storages.values()):
            for match in storage._get_or_init_view_instrument_match(real):
                template = match._aggregation
                if type(template) is sdk["Drop"]:
                    continue
                if type(template) is not sdk["Explicit"] or template._boundaries != bounds:
                    return None
                matches.append(match)
        if not matches:
            return "dropped"
        # One real Measurement: the SDK cleans the attributes as record() would,
        # and it is what the exemplar reservoir is offered (the largest gap).
        measurement = sdk["Measurement"](monitor.gap_max, time_ns(), real, sdk["get_current"](), attributes)
        should_sample = consumer._sdk_config.exemplar_filter.should_sample(
            measurement.value, measurement.time_unix_nano, measurement.attributes, measurement.context
        )
        cleaned = dict(measurement.attributes or {})
        hash_attributes = sdk["hash_attributes"]
    except Exception:  # noqa: BLE001 - nothing merged yet: the public API takes over
        _logger.debug("llm_stream_otel: metrics fast path declined", exc_info=True)
        return None
    counts = monitor.gap_counts
    total = monitor.gap_total
    low, high = monitor.gap_min, monitor.gap_max
    for match in matches:
        keys = match._view._attribute_keys
        attrs = cleaned if keys is None else {k: v for k, v in cleaned.items() if k in keys}
        key = hash_attributes(attrs)
        # The same locks, in the same order, as consume_measurement() + aggregate()
        # (and collect()): the match's, then the aggregation's.
        with match._lock:
            aggregation = match._get_or_create_aggregation(key, dict(attrs))
            with aggregation._lock:
                if aggregation._value is None:
                    aggregation._value = aggregation._get_empty_bucket_counts()
                value = aggregation._value
                for index, count in enumerate(counts):
                    if count:
                        value[index] += count
                aggregation._sum += total
                if aggregation._record_min_max:
                    if low < aggregation._min:
                        aggregation._min = low
                    if high > aggregation._max:
                        aggregation._max = high
            aggregation._sample_exemplar(measurement, should_sample)
    return "sdk"


# --------------------------------------------------------------------------- self-test


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


def _self_test(sdk: Dict[str, Any]) -> bool:
    """Prove on this SDK that the merge exports what per-gap ``record()`` calls export."""
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

    bounds = tuple(t.SECONDS_BUCKETS)
    batches = [
        [0.004, 0.0005, 0.02, 0.02, 0.5, 0.011, 3.0, 100.0, 0.01],
        [0.03, 0.0001, 0.7],
        [1.5, 1.25],
    ]
    attrs = {"a": "x", "n": 1, "flag": True}

    def readers() -> List[InMemoryMetricReader]:
        return [
            InMemoryMetricReader(),
            InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA}),
        ]

    def run(merge: bool) -> List[Any]:
        rs = readers()
        provider = MeterProvider(metric_readers=rs, shutdown_on_exit=False)
        try:
            histogram = provider.get_meter("llm_stream_otel.selftest").create_histogram(
                "selftest", unit="s", explicit_bucket_boundaries_advisory=bounds
            )
            points = []
            for batch in batches:
                if merge:
                    if _merge(sdk, histogram, bounds, _Gaps(batch, bounds), attrs) != "sdk":
                        return []
                else:
                    for gap in batch:
                        histogram.record(gap, attrs)
                for reader in rs:
                    points.append(_points(reader))
            return points
        finally:
            provider.shutdown()

    merged, recorded = run(True), run(False)
    if not merged or len(merged) != len(recorded):
        return False
    for got, want in zip(merged, recorded):
        if len(got) != len(want):
            return False
        for a, b in zip(got, want):
            if (a[0], a[1], a[3], a[4], a[5], a[6]) != (b[0], b[1], b[3], b[4], b[5], b[6]):
                return False
            if abs(a[2] - b[2]) > 1e-9 * max(1.0, abs(b[2])):
                return False
    return True


def _points(reader: Any) -> List[tuple]:
    data = reader.get_metrics_data()
    out = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for p in metric.data.data_points:
                    out.append(
                        (
                            tuple(sorted(dict(p.attributes).items())),
                            p.count,
                            p.sum,
                            tuple(p.bucket_counts),
                            tuple(p.explicit_bounds),
                            p.min,
                            p.max,
                        )
                    )
    return sorted(out)
