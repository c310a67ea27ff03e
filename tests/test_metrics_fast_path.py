"""A stream's ending exports the same metrics whichever path writes them.

``Instruments.write`` writes the ending's values (duration, time to first
chunk, chunks, stalls, token usage, idle before the end, the outcome) and the
gap merge: queued and written many at once when a reader collects
(``metrics.ending_buffer``), or at once in one pass through
``metrics.sdk_fast_path`` where it is proven, else through ``record()`` /
``add()``. The runs below record the same settled
monitors; every exported point must be the same: counts, sums, buckets, min,
max, counter values, attributes and the histograms' exemplars (which name the
stream's span), on cumulative and delta readers, through an attribute-key
view, across two collections. The one documented difference: the gap
histogram's merge offers the stream's largest gap to the exemplar reservoir,
one exemplar per stream rather than one per gap.
"""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import TracerProvider

from llm_stream_otel import semconv as t
from llm_stream_otel.metrics import ending_buffer, sdk_fast_path
from llm_stream_otel.metrics.instruments import Instruments
from llm_stream_otel.stream.monitor import StreamMonitor
from llm_stream_otel.stream.record import record_metrics

BASE = {t.GEN_AI_OPERATION_NAME: "chat", t.GEN_AI_PROVIDER_NAME: "openai", t.GEN_AI_REQUEST_MODEL: "m"}


def _monitors():
    """Settled monitors: completed with usage, truncated with a stall, failed, one chunk, length."""
    out = []
    for case in range(5):
        m = StreamMonitor(0.0, stall_threshold=0.5)
        if case == 2:
            m.fail_request(0.3, ConnectionError("refused"))
            out.append((m, None))
            continue
        now = 0.1 + 0.01 * case
        for i in range(1 if case == 3 else 6 + case):
            now += (0.004, 0.03, 0.9, 0.012, 0.2)[(i + case) % 5]
            m.chunk(now, None)
        if case in (0, 4):
            m.input_tokens, m.output_tokens = 12 + case, 30 + case
            m.finish(0, "stop" if case == 0 else "length")
            m.done_seen = True
            m.end(now + 0.001)
        elif case == 1:
            m.headers_at = 0.05
            m.fail_stream(now + 0.7, TimeoutError("read timed out"))
        else:
            m.finish(0, "stop")
            m.end(now + 0.002)
        out.append((m, "m-resp" if case != 3 else None))
    return out


def _readers():
    delta = {SdkHistogram: AggregationTemporality.DELTA, SdkCounter: AggregationTemporality.DELTA}
    return [InMemoryMetricReader(), InMemoryMetricReader(preferred_temporality=delta)]


def _points(reader):
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    attrs = tuple(sorted(dict(p.attributes).items()))
                    if hasattr(p, "bucket_counts"):
                        exemplars = tuple(
                            (e.value, e.span_id, e.trace_id, tuple(sorted(dict(e.filtered_attributes or {}).items())))
                            for e in p.exemplars
                        )
                        out.append((metric.name, attrs, p.count, round(p.sum, 12), tuple(p.bucket_counts), p.min, p.max, exemplars))
                    else:
                        out.append((metric.name, attrs, p.value))
    return sorted(out, key=repr)


def _run(fast: bool, queue: bool = False):
    readers = _readers()
    views = [View(instrument_name=t.METRIC_DURATION, attribute_keys={t.OUTCOME, t.GEN_AI_OPERATION_NAME})]
    provider = MeterProvider(metric_readers=readers, views=views, shutdown_on_exit=False)
    instruments = Instruments(provider.get_meter("test"), metrics_fast_path=fast, queue_endings=queue)
    span = TracerProvider().get_tracer("test").start_span("stream")
    _run.span = getattr(_run, "span", span)  # one span for both runs: the exemplars must name it
    token = otel_context.attach(trace.set_span_in_context(_run.span))
    collected = []
    try:
        for _round in range(2):
            for monitor, response_model in _monitors():
                record_metrics(instruments, monitor, BASE, response_model, is_retry=_round == 1)
            if queue and _round == 0:  # (after a surprise in the first collect, nothing more is queued)
                assert len(instruments.queue._pending) == 5, "queued until the collect below"
            collected.append([_points(reader) for reader in readers])
    finally:
        otel_context.detach(token)
        provider.shutdown()
    return collected, instruments


def _without_gap_exemplars(collected):
    """The gap histogram's points without their exemplars (one per stream on the fast path, see above)."""
    return [
        [[p[:-1] if p[0] == t.METRIC_TIME_PER_OUTPUT_CHUNK else p for p in points] for points in rounds]
        for rounds in collected
    ]


@pytest.mark.parametrize("queue", [False, True], ids=["at-once", "queued"])
def test_the_ending_exports_the_same_through_the_fast_path_and_the_public_api(queue):
    assert sdk_fast_path.proven(), "the self-test should prove the fast path on the SDK the tests run"
    assert ending_buffer.proven(), "the self-test should prove queued endings on the SDK the tests run"
    public, _ = _run(fast=False)
    fast, instruments = _run(fast=True, queue=queue)
    assert not instruments.fast_path.broken
    assert (instruments.queue is not None and instruments.queue.state == "queueing") is queue
    names = {point[0] for rounds in public for points in rounds for point in points}
    assert {t.METRIC_DURATION, t.METRIC_TIME_PER_OUTPUT_CHUNK, t.METRIC_TOKEN_USAGE, t.METRIC_OUTCOMES, t.METRIC_STALLS} <= names
    assert _without_gap_exemplars(fast) == _without_gap_exemplars(public)
    span_id = _run.span.get_span_context().span_id
    gap_points = [p for p in fast[0][0] if p[0] == t.METRIC_TIME_PER_OUTPUT_CHUNK]
    assert gap_points and all(p[-1] and all(e[1] == span_id for e in p[-1]) for p in gap_points)


@pytest.mark.parametrize(
    "module, step",
    [(sdk_fast_path, "_aggregate"), (ending_buffer, "_add_to_histogram"), (ending_buffer, "_write_group")],
    ids=["at-once", "queued-histogram", "queued-any-group"],
)
def test_a_surprise_inside_the_fast_path_hands_the_rest_to_the_public_api(monkeypatch, module, step):
    """Our own bug (or an SDK change) mid-write: nothing is lost, nothing is counted twice,
    and the fast path stays off for good (queued: the groups not written yet go to the public
    API in their own endings' contexts, so their exemplars still name their spans)."""
    public, _ = _run(fast=False)
    calls = {"n": 0}
    original = getattr(module, step)

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("surprise before the third write")
        return original(*args)

    monkeypatch.setattr(module, step, flaky)
    fast, instruments = _run(fast=True, queue=module is ending_buffer)
    assert calls["n"] >= 3
    assert instruments.fast_path.broken
    assert instruments.queue is None or instruments.queue.state == "off"
    assert _without_gap_exemplars(fast) == _without_gap_exemplars(public)


def test_a_surprise_while_offering_exemplars_costs_only_exemplars(monkeypatch):
    """Counted already when the offer fails: counts, sums and buckets stay exact, nothing twice."""
    public, _ = _run(fast=False)

    def broken(*args):
        raise RuntimeError("surprise in the reservoir")

    monkeypatch.setattr(ending_buffer, "_offer_group", broken)
    fast, instruments = _run(fast=True, queue=True)
    assert instruments.fast_path.broken
    strip = lambda collected: [[[p[:-1] if len(p) == 8 else p for p in points] for points in rounds] for rounds in collected]  # noqa: E731
    assert strip(fast) == strip(public)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_value_the_sdk_would_refuse_goes_to_the_public_api(value, caplog):
    """A bad value (a clock step, a server's negative token count) is the SDK's to refuse, with its warning."""
    readers = _readers()
    provider = MeterProvider(metric_readers=readers, shutdown_on_exit=False)
    instruments = Instruments(provider.get_meter("test"), metrics_fast_path=True)
    instruments.write([(instruments.token_usage, value, BASE, False), (instruments.chunks, 3, BASE, False)])
    names = {point[0] for point in _points(readers[0])}
    assert names == {t.METRIC_CHUNKS}
    assert not instruments.fast_path.broken
    provider.shutdown()


def test_the_queue_is_bounded_without_a_reader_that_collects():
    """No reader ever collects: the ending that fills the queue writes it; nothing is lost."""
    readers = _readers()
    provider = MeterProvider(metric_readers=readers, shutdown_on_exit=False)
    instruments = Instruments(provider.get_meter("test"))
    monitors = _monitors()
    most = 0
    for i in range(3 * ending_buffer.PENDING_LIMIT + 5):
        monitor, response_model = monitors[i % len(monitors)]
        record_metrics(instruments, monitor, BASE, response_model, is_retry=False)
        most = max(most, len(instruments.queue._pending))
    assert instruments.queue.state == "queueing"
    assert most == ending_buffer.PENDING_LIMIT - 1
    written = 3 * ending_buffer.PENDING_LIMIT + 5 - len(instruments.queue._pending)
    assert written == 3 * ending_buffer.PENDING_LIMIT
    instruments.close()  # what uninstrument() does: the rest written now, nothing queued after
    outcomes = [p for p in _points(readers[0]) if p[0] == t.METRIC_OUTCOMES]
    assert sum(p[2] for p in outcomes) == 3 * ending_buffer.PENDING_LIMIT + 5
    provider.shutdown()


@pytest.mark.parametrize("endings", [1, ending_buffer.INLINE_FLUSH])
def test_a_small_queue_is_written_ending_by_ending_at_each_endings_own_time(endings):
    """A flush of a few endings writes each the way it is written at once, in its own context
    and at its own time: the same points, and exemplars that name each ending's span and
    carry the time it ended, not the time of the collect that wrote it."""
    import time

    def run(queue):
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        instruments = Instruments(provider.get_meter("test"), queue_endings=queue)
        tracer = TracerProvider().get_tracer("test")
        spans, ended = {}, []
        for i in range(endings):
            span = tracer.start_span(f"stream {i}")
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                monitor, response_model = _monitors()[i]
                record_metrics(instruments, monitor, BASE, response_model, is_retry=False)
            finally:
                otel_context.detach(token)
            spans[span.get_span_context().span_id] = i
            ended.append(time.time_ns())
            time.sleep(0.002)
        if queue:
            assert len(instruments.queue._pending) == endings
        time.sleep(0.02)
        points, times = [], []
        for metric, p in sdk_fast_path.data_points(reader):
            if not hasattr(p, "bucket_counts"):
                points.append((metric.name, tuple(sorted(dict(p.attributes).items())), p.value))
                continue
            exemplars = () if metric.name == t.METRIC_TIME_PER_OUTPUT_CHUNK else tuple(
                (e.value, spans[e.span_id]) for e in p.exemplars
            )
            times += [(spans[e.span_id], e.time_unix_nano) for e in p.exemplars]
            points.append((metric.name, tuple(sorted(dict(p.attributes).items())), p.count, p.sum, tuple(p.bucket_counts), exemplars))
        provider.shutdown()
        return sorted(points, key=repr), times, ended, instruments

    public, _, _, _ = run(False)
    queued, times, ended, instruments = run(True)
    assert instruments.queue.state == "queueing" and not instruments.fast_path.broken
    assert queued == public
    assert times and all((ended[i - 1] if i else 0) <= at <= ended[i] for i, at in times), "each exemplar at its ending's time"


def test_instruments_dropped_without_close_lose_nothing_and_are_freed_once_written():
    """Only a queue with endings waiting is held (for the next collect): an ``Instruments``
    dropped without ``close()`` still has its endings counted, and is freed after that."""
    import gc
    import weakref

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instruments = Instruments(provider.get_meter("test"))
    for monitor, response_model in _monitors():
        record_metrics(instruments, monitor, BASE, response_model, is_retry=False)
    assert len(instruments.queue._pending) == 5
    alive = weakref.ref(instruments)
    del instruments
    gc.collect()
    assert alive() is not None, "held while its endings wait"
    outcomes = [p for p in _points(reader) if p[0] == t.METRIC_OUTCOMES]
    assert sum(p[2] for p in outcomes) == 5
    gc.collect()
    assert alive() is None, "freed once its queue is written"
    provider.shutdown()


def test_endings_from_many_threads_and_collections_between_them_count_once():
    """Four threads end streams while a fifth collects from a delta reader: every ending counted once."""
    import threading

    delta = InMemoryMetricReader(preferred_temporality={SdkCounter: AggregationTemporality.DELTA, SdkHistogram: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[delta], shutdown_on_exit=False)
    instruments = Instruments(provider.get_meter("test"))
    monitors = _monitors()
    per_thread, threads_n = 400, 4
    collected = []
    done = threading.Event()

    def end_streams(offset):
        for i in range(per_thread):
            monitor, response_model = monitors[(i + offset) % len(monitors)]
            record_metrics(instruments, monitor, BASE, response_model, is_retry=False)

    def collect():
        while not done.is_set():
            collected.append(_points(delta))
        collected.append(_points(delta))

    collector = threading.Thread(target=collect)
    collector.start()
    workers = [threading.Thread(target=end_streams, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    collector.join()
    total = sum(p[2] for points in collected for p in points if p[0] == t.METRIC_OUTCOMES)
    durations = sum(p[2] for points in collected for p in points if p[0] == t.METRIC_DURATION)
    assert total == per_thread * threads_n
    assert durations == sum(1 for n in range(threads_n) for i in range(per_thread) if monitors[(i + n) % len(monitors)][0].duration is not None)
    assert instruments.queue.state == "queueing" and not instruments.fast_path.broken
    provider.shutdown()


def test_the_simple_reservoirs_draws_are_the_ones_randrange_makes():
    """The grouped write draws a counter exemplar's slot as the SDK's reservoir does,
    ``randrange(0, n)``, through the generator's ``_randbelow`` where that is the same draw."""
    import random

    from opentelemetry.sdk.metrics._internal.exemplar import exemplar_reservoir

    draw = ending_buffer._draw(exemplar_reservoir.randrange)
    assert draw == random._inst._randbelow  # the stdlib's randrange: the short way
    state = random.getstate()
    try:
        random.seed(1234)
        expected = [random.randrange(0, n) for n in range(1, 3000)]
        random.seed(1234)
        assert [draw(n) for n in range(1, 3000)] == expected
        # another randrange (a patched or wrapped one): called as the reservoir would call it
        calls = []
        other = ending_buffer._draw(lambda start, stop: calls.append((start, stop)) or 0)
        assert other(5) == 0 and calls == [(0, 5)]
    finally:
        random.setstate(state)
