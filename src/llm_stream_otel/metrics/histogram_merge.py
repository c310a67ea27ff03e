"""``GapRecorder``: one stream's inter-chunk gaps into
``gen_ai.client.operation.time_per_output_chunk``, once per stream.

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
  exemplar reservoir. Guarded and self-tested: see ``sdk_fast_path``.
  Opt out with ``OTEL_INSTRUMENTATION_LLM_STREAM_METRICS_FAST_PATH=false``.
- public API otherwise (another SDK, a view with other buckets or another
  aggregation): one ``record()`` per gap from ``StreamMonitor.gap_replay()``,
  so count, sum, min, max and our buckets stay exact.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from opentelemetry.metrics import Histogram

from .sdk_fast_path import FastPath


class GapRecorder:
    """Record a stream's in-stream aggregated gaps into the per-chunk histogram.

    Not an instrument itself (no ``record``/``add``): code that walks the
    instruments of ``Instruments`` skips it.
    """

    def __init__(self, histogram: Histogram, bounds: Sequence[float], fast_path: Optional[FastPath] = None) -> None:
        self.histogram = histogram
        self.bounds = tuple(bounds)
        self.fast_path = fast_path

    def record_gaps(self, monitor: Any, attributes: Dict[str, Any]) -> str:
        """Record every gap of a settled monitor; returns the path taken (for tests and the bench)."""
        if monitor.gaps < 1:
            return "none"
        fast = self.fast_path
        if fast is not None and fast.usable():
            path = fast.merge_gaps(self.histogram, self.bounds, monitor, attributes)
            if path is not None:
                return path
        return self.record_public(monitor, attributes)

    def record_public(self, monitor: Any, attributes: Dict[str, Any]) -> str:
        """One ``record()`` per gap (``StreamMonitor.gap_replay``): exact count, sum, buckets, min and max."""
        if monitor.gaps < 1:
            return "none"
        histogram = self.histogram
        for value, count in monitor.gap_replay():
            for _ in range(count):
                histogram.record(value, attributes)
        return "api"
