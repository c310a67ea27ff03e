"""The series budget of one instrumented service (see the README's "Cardinality budget").

A service exposes, for every ``(gen_ai_request_model, server_address)`` pair
it calls, one series per *combination* of the remaining low-cardinality labels
(operation, outcome, truncation reason, is_retry, error type, token type,
retry layer) that actually occurred, times the bucket count for histograms::

    series(service) = sum over pairs of  sum over metrics of  combos(metric, pair) * width(metric)

with ``width`` = 1 for counters and ``BUCKETS + 2`` (buckets, ``_sum``,
``_count``) for histograms.  :data:`LABEL_KEYS` is the contract of which labels
each metric carries (a new label multiplies every series: the test fails),
:data:`COMBOS_PER_PAIR` the most combinations one pair may produce (measured
from the demo, which exercises every outcome and reason), :data:`BUCKETS` the
histogram bucket count of the OTel SDK's default boundaries.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, FrozenSet, Iterable, Mapping, Set, Tuple

from llm_stream_otel import semconv as t
from llm_stream_otel import series as n

#: Labels every series of ours carries, besides the metric's own.
COMMON = frozenset({n.MODEL, n.SERVER, "server_port", n.RESPONSE_MODEL, "gen_ai_provider_name",
                    "gen_ai_operation_name", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"})
_OUTCOME_DIMS = frozenset({n.ERROR_TYPE})

#: Prometheus base name -> its label keys (``le`` excluded), as exposed.
LABEL_KEYS: Dict[str, FrozenSet[str]] = {
    n.DURATION: COMMON | {n.ERROR_TYPE, n.OUTCOME},
    n.TTFC: COMMON | _OUTCOME_DIMS,
    n.CHUNK_INTERVAL: COMMON | _OUTCOME_DIMS,
    n.CHUNKS: COMMON | _OUTCOME_DIMS,
    n.TOKENS: COMMON | {n.TOKEN_TYPE},
    # Issue 13: the response's status code, intermediary and connection reuse, and
    # the innermost error cause (closed or capped sets, see the README's budget).
    n.OUTCOMES: COMMON | {n.ERROR_TYPE, n.OUTCOME, n.REASON, n.IS_RETRY,
                          n.STATUS_CODE, n.INTERMEDIARY, n.CONNECTION_REUSED, n.ERROR_CAUSE},
    n.STALLS: COMMON | _OUTCOME_DIMS,  # a trailing stall of a cut stream carries its error type
    n.RETRIES: (COMMON - {n.RESPONSE_MODEL}) | {n.RETRY_LAYER},  # counted before a response
    n.RECOVERIES: COMMON - {n.RESPONSE_MODEL},
    n.IDLE_BEFORE_END: COMMON | {n.ERROR_TYPE, n.REASON},  # truncated streams only
}

#: Histogram buckets per series (the semconv-advised 14 boundaries + ``+Inf``).
BUCKETS = 15
#: Histograms with boundaries of their own.
_OWN_BUCKETS = {n.IDLE_BEFORE_END: len(t.IDLE_BEFORE_END_BUCKETS) + 1}


def buckets(base: str) -> int:
    """Buckets per series of the histogram ``base`` (``+Inf`` included)."""
    return _OWN_BUCKETS.get(base, BUCKETS)

#: The most label combinations (besides model and server) one model/server pair may produce.
COMBOS_PER_PAIR: Dict[str, int] = {
    # completed, length, content_filter, abandoned + truncated x reason x is_retry x cause,
    # failed x error type x status code, each with its intermediary / reused label: the
    # demo, which runs every outcome, reason and cut signature, measures 17-20
    n.OUTCOMES: 28,
    # outcome x error type (the demo's random mix measures 8-9; a failed stream has one
    # error type per HTTP status / transport error, a truncated one one per reason)
    n.DURATION: 12,
    n.TTFC: 8,  # error type, of the streams that got a first chunk (the demo: 4)
    n.CHUNK_INTERVAL: 8,
    n.CHUNKS: 8,
    n.TOKENS: 2,  # input, output
    n.STALLS: 3,  # none, or the error type of a cut stream's trailing stall
    n.RETRIES: 3,  # sdk, application, helper
    n.RECOVERIES: 1,
    n.IDLE_BEFORE_END: 6,  # truncation reason x error type (truncated streams only)
}

#: Pair-level labels: the budget is per (model, server) and grows with them.
PAIR = (n.MODEL, n.SERVER)
# The response model is a combination label: a stream cut before its first chunk has none,
# so one (model, server) pair can have the same outcome with and without it.
_NOT_COMBO = frozenset({*PAIR, "server_port", "le"})


def width(base: str) -> int:
    """Series one combination costs: 1 for a counter, buckets + _sum + _count for a histogram."""
    return buckets(base) + 2 if n.METRICS.get(_otel(base)) and n.INSTRUMENTS[_otel(base)][0] == n.HISTOGRAM else 1


def _otel(base: str) -> str:
    return next(o for o, b in n.METRICS.items() if b == base)


def budget_per_pair() -> int:
    """Series one (model, server) pair may cost a service, at most."""
    return sum(c * width(m) for m, c in COMBOS_PER_PAIR.items())


def _base(series_name: str) -> str:
    for suffix in n.HISTOGRAM_SUFFIXES:
        if series_name.endswith(suffix) and series_name[: -len(suffix)] in LABEL_KEYS:
            return series_name[: -len(suffix)]
    return series_name


def measure(samples: Iterable[Tuple[str, Mapping[str, str], float]]) -> Dict[str, object]:
    """From one service's exposition samples ``(name, labels, value)``: what it costs.

    Returns ``series`` ({base: series count}), ``keys`` ({base: label keys}),
    ``combos`` ({base: {pair: combination count}}), ``buckets`` ({base: set of
    bucket counts per combination}) and ``pairs``.
    """
    series: Dict[str, int] = defaultdict(int)
    keys: Dict[str, Set[str]] = defaultdict(set)
    combos: Dict[str, Dict[Tuple[str, ...], Set[Tuple]]] = defaultdict(lambda: defaultdict(set))
    bucket_sets: Dict[Tuple[str, Tuple], int] = defaultdict(int)
    ours = set(n.all_series_names())
    for name, labels, _ in samples:
        if name not in ours:
            continue
        base = _base(name)
        series[base] += 1
        keys[base] |= set(labels) - {"le"}
        pair = tuple(labels.get(k, "") for k in PAIR)
        combo = tuple(sorted((k, v) for k, v in labels.items() if k not in _NOT_COMBO))
        combos[base][pair].add(combo)
        if name.endswith("_bucket"):
            bucket_sets[(base, pair + combo)] += 1
    buckets: Dict[str, Set[int]] = defaultdict(set)
    for (base, _), count in bucket_sets.items():
        buckets[base].add(count)
    return {
        "series": dict(series),
        "keys": {b: frozenset(k) for b, k in keys.items()},
        "combos": {b: {p: len(c) for p, c in per.items()} for b, per in combos.items()},
        "buckets": dict(buckets),
        "pairs": {p for per in combos.values() for p in per},
    }
