"""The per-chunk gap histogram is exact whichever path records it.

``GapRecorder`` merges a stream's in-stream aggregated gaps into the SDK's
aggregation (fast path) or replays them through the public API. Both must
export what one ``Histogram.record()`` per gap would: same count, sum,
bucket counts, min and max, for cumulative and delta readers.
"""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader

from llm_stream_otel import semconv as t
from llm_stream_otel.metrics.instruments import Instruments
from llm_stream_otel.stream.monitor import StreamMonitor

ATTRS = {t.GEN_AI_REQUEST_MODEL: "m", t.GEN_AI_OPERATION_NAME: "chat"}


def gap_points(reader):
    data = reader.get_metrics_data()
    points = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == t.METRIC_TIME_PER_OUTPUT_CHUNK:
                    points += [(p.count, round(p.sum, 9), tuple(p.bucket_counts), p.min, p.max) for p in metric.data.data_points]
    return points


def reader(delta):
    if delta:
        return InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA})
    return InMemoryMetricReader()


def streams(seed):
    rng = random.Random(seed)
    result = []
    for _ in range(6):
        gaps = [rng.choice([0.0, 0.01, 0.02, 5.12]) if rng.random() < 0.2 else rng.expovariate(20) for _ in range(rng.randint(2, 300))]
        result.append(gaps)
    return result


def monitor_for(gaps):
    monitor = StreamMonitor(0.0, stall_threshold=1.0)
    now = 1.0
    monitor.chunk(now, None)
    for gap in gaps:
        now += gap
        monitor.chunk(now, None)
    return monitor


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_and_public_api_export_what_per_gap_records_would(delta, seed):
    baseline_reader, fast_reader, api_reader = reader(delta), reader(delta), reader(delta)
    baseline = Instruments(MeterProvider(metric_readers=[baseline_reader]).get_meter("x"), metrics_fast_path=False)
    fast = Instruments(MeterProvider(metric_readers=[fast_reader]).get_meter("x"), metrics_fast_path=True)
    api = Instruments(MeterProvider(metric_readers=[api_reader]).get_meter("x"), metrics_fast_path=False)
    paths = set()
    for round_ in range(2):  # two collections: delta readers must reset, cumulative ones accumulate
        for gaps in streams(seed * 10 + round_):
            monitor = monitor_for(gaps)
            # gaps reconstructed from timestamps, exactly as the monitor saw them
            stamps = [1.0]
            for gap in gaps:
                stamps.append(stamps[-1] + gap)
            for a, b in zip(stamps, stamps[1:]):
                baseline.time_per_output_chunk.record(b - a, ATTRS)
            paths.add(fast.gaps.record_gaps(monitor, ATTRS))
            api.gaps.record_gaps(monitor, ATTRS)
        expected = gap_points(baseline_reader)
        assert expected and gap_points(fast_reader) == expected
        assert gap_points(api_reader) == expected
    assert paths == {"sdk"}, "the fast path should be taken with the default SDK and buckets"
