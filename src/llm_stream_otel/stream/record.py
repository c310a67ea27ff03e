"""Turn a settled StreamMonitor into span attributes, events and metrics.

Runs once per stream (never per chunk), after the monitor has settled.
``Recorder.finish`` is the one place a stream's ending is recorded: retry
bookkeeping, span attributes and status, metrics, the span's end.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from .. import semconv as t
from .outcome import error_cause, error_type
from ..guard import internal_error
from ..metrics.cardinality import CardinalityLimiter
from ..metrics.instruments import Instruments
from ..metrics.sdk_fast_path import Record
from ..retries.attempts import RetryTracker
from .metric_attributes import EndingAttributes, EndingCache, metric_facts
from .monitor import StreamMonitor
from .span_fast_path import set_span_attributes

_ERROR_OUTCOMES = (t.OUTCOME_TRUNCATED, t.OUTCOME_FAILED)


def outcome_error_type(monitor: StreamMonitor) -> Optional[str]:
    """``error.type`` for a truncated or failed stream, else None."""
    if monitor.outcome not in _ERROR_OUTCOMES:
        return None
    if monitor.error is not None:
        return error_type(monitor.error)
    return monitor.reason or t.ERROR_TYPE_OTHER


def record_metrics(
    instruments: Instruments,
    monitor: StreamMonitor,
    base: Dict[str, Any],
    response_model: Optional[str],
    is_retry: bool,
    cache: Optional[EndingCache] = None,
) -> None:
    """Record every per-stream metric of design.md: the values in one ``write``, then the gaps.

    ``cache``: where the ending's attribute sets are kept (see ``metric_attributes``)."""
    outcome = monitor.outcome
    error = monitor.error
    cause = error_cause(error) if error is not None and outcome in _ERROR_OUTCOMES else None
    key = (base, response_model, outcome_error_type(monitor), outcome, monitor.reason, is_retry, metric_facts(monitor.http), cause)
    sets = cache.get(key) if cache is not None else EndingAttributes(*key)
    attrs = sets.values
    records: List[Record] = []
    present = 0  # which of the values below are recorded: with ``sets``, the shape of the ending

    duration = monitor.duration
    if duration is not None:
        records.append((instruments.duration, duration, sets.duration, False))
        present = 1
    ttfc = monitor.time_to_first_chunk
    if ttfc is not None:
        records.append((instruments.time_to_first_chunk, ttfc, attrs, False))
        present |= 2
    if outcome != t.OUTCOME_FAILED:
        records.append((instruments.chunks, monitor.chunks, attrs, False))
        present |= 4
    if monitor.stalls:
        records.append((instruments.stalls, monitor.stalls, attrs, True))
        present |= 8
    if monitor.input_tokens is not None:
        records.append((instruments.token_usage, monitor.input_tokens, sets.usage_input, False))
        present |= 16
    if monitor.output_tokens is not None:
        records.append((instruments.token_usage, monitor.output_tokens, sets.usage_output, False))
        present |= 32
    if outcome == t.OUTCOME_TRUNCATED and monitor.idle_before_end is not None:
        records.append((instruments.idle_before_end, monitor.idle_before_end, sets.idle, False))
        present |= 64
    records.append((instruments.outcomes, 1, sets.outcome, True))
    # Then one value per gap, handed over once per stream (see metrics.histogram_merge.GapRecorder).
    # (instruments, sets, present) determine every record's instrument and attribute dict: the
    # queue's grouped write plans once per shape (``metrics.ending_buffer``).
    instruments.write(records, monitor, attrs, (instruments, sets, present))


def _set_quietly(span: Span, attributes: Dict[str, Any]) -> None:
    try:
        if attributes and span.is_recording():
            set_span_attributes(span, attributes)
    except Exception:  # noqa: BLE001
        internal_error("span annotation")


def annotate_span(
    span: Span,
    monitor: StreamMonitor,
    wall_start_ns: int,
    capture_content: bool,
    extra: Optional[Dict[str, Any]] = None,
) -> None:
    """Set the summary attributes (and ``extra``), events and status on a stream's span."""
    if not span.is_recording():
        return
    chunks = monitor.chunks
    attrs: Dict[str, Any] = dict(extra) if extra else {}
    attrs[t.OUTCOME] = monitor.outcome
    attrs[t.CHUNKS] = chunks
    attrs[t.STALL_COUNT] = monitor.stalls
    attrs[t.STALL_THRESHOLD] = monitor.stall_threshold
    if monitor.reason:
        attrs[t.TRUNCATION_REASON] = monitor.reason
    ttfc = monitor.time_to_first_chunk
    if ttfc is not None:
        attrs[t.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttfc
        attrs[t.TIME_TO_FIRST_CHUNK] = ttfc
    if monitor.gaps:
        attrs[t.MAX_GAP] = monitor.gap_max
    if monitor.response_id:
        attrs[t.GEN_AI_RESPONSE_ID] = monitor.response_id
    if monitor.response_model:
        attrs[t.GEN_AI_RESPONSE_MODEL] = monitor.response_model
    if monitor.input_tokens is not None:
        attrs[t.GEN_AI_USAGE_INPUT_TOKENS] = monitor.input_tokens
    if monitor.output_tokens is not None:
        attrs[t.GEN_AI_USAGE_OUTPUT_TOKENS] = monitor.output_tokens
    if monitor.reasoning_tokens is not None:
        attrs[t.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = monitor.reasoning_tokens
    if monitor.cache_read_tokens is not None:
        attrs[t.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = monitor.cache_read_tokens
    if monitor.cache_creation_tokens is not None:
        attrs[t.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = monitor.cache_creation_tokens
    if monitor.finish_reason_missing:
        attrs[t.FINISH_REASON_MISSING] = True
    if monitor.error_after_end:
        attrs[t.ERROR_AFTER_END] = monitor.error_after_end
    err = outcome_error_type(monitor)
    if err:
        attrs[t.ERROR_TYPE] = err
    _root_cause_attributes(attrs, monitor)
    reasons = {t.GEN_AI_RESPONSE_FINISH_REASONS: list(dict.fromkeys(monitor.finish_reasons))} if monitor.finish_reasons else None
    set_span_attributes(span, attrs, reasons)

    def at(moment: float) -> int:
        return wall_start_ns + int((moment - monitor.started_at) * 1e9)

    for moment, gap, index in monitor.stall_events:
        span.add_event(t.EVENT_STALL, {"llm.stream.gap": gap, "llm.stream.chunk_index": index}, at(moment))
    if capture_content and monitor.content:
        span.add_event(t.EVENT_CHUNK, {"gen_ai.completion": "".join(monitor.content)})
    if monitor.outcome == t.OUTCOME_TRUNCATED:
        event = {t.TRUNCATION_REASON: monitor.reason or t.REASON_OTHER, t.CHUNKS: monitor.chunks}
        if err:
            event[t.ERROR_TYPE] = err
        span.add_event(t.EVENT_TRUNCATED, event, at(monitor.ended_at or monitor.started_at))
    if monitor.error is not None:
        _record_exception(span, monitor.error, capture_content)
    if monitor.outcome in _ERROR_OUTCOMES:
        description = f"stream {monitor.outcome}" + (f": {monitor.reason}" if monitor.reason else "")
        span.set_status(Status(StatusCode.ERROR, description))


def _root_cause_attributes(attrs: Dict[str, Any], monitor: StreamMonitor) -> None:
    """Why it was cut: the silence before the end, the HTTP response, the innermost cause."""
    if monitor.idle_before_end is not None:
        attrs[t.IDLE_BEFORE_END] = monitor.idle_before_end
    time_to_headers = monitor.time_to_headers
    if time_to_headers is not None:
        attrs[t.TIME_TO_HEADERS] = time_to_headers
    if monitor.http:
        attrs.update(monitor.http)
    if monitor.error is not None and monitor.outcome in _ERROR_OUTCOMES:
        attrs[t.ERROR_CAUSE] = error_cause(monitor.error)


def _record_exception(span: Span, exc: BaseException, capture_content: bool) -> None:
    """The exception event; its message only when content capture is on.

    A provider's error message can quote the request (an in-stream error
    event echoing the prompt), so by default only the type is exported.
    """
    if capture_content:
        span.record_exception(exc)
        return
    klass = type(exc)
    module = klass.__module__
    qualified = klass.__qualname__ if module in ("builtins", "__main__") else f"{module}.{klass.__qualname__}"
    span.add_event("exception", {"exception.type": qualified})


class Recorder:
    """What a call's ending is recorded with: the instruments, the retry tracker, the caps."""

    __slots__ = ("instruments", "retries", "limit_model", "capture_content", "ending_attributes")

    def __init__(
        self, instruments: Instruments, retries: RetryTracker, limit_model: CardinalityLimiter, capture_content: bool
    ) -> None:
        self.instruments = instruments
        self.retries = retries
        self.limit_model = limit_model
        self.capture_content = capture_content
        self.ending_attributes = EndingCache()

    def sdk_retries(self, count: int, metric_attributes: Dict[str, Any]) -> None:
        """The SDK re-sent a request ``count`` more times (the ``sdk`` retry layer)."""
        self.instruments.retries.add(count, {**metric_attributes, t.RETRY_LAYER: t.RETRY_LAYER_SDK})

    def finish(self, call: Any, at_exit: bool = False) -> None:
        """Every recording step on its own: one failing step costs only itself.

        Runs in the span's context, so that metric exemplars name this span."""
        monitor = call.monitor
        span = call.span
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            is_retry = False
            # The retry and call attributes, set with the summary in one call.
            extra: Dict[str, Any] = {}
            if call.sdk_retries:
                extra[t.SDK_RETRIES] = call.sdk_retries
            if at_exit:
                extra[t.ENDED_AT_EXIT] = True
            try:
                if call.attempt is not None:
                    is_retry = call.attempt.is_retry
                    self.retries.finish(
                        call.attempt, monitor.outcome, span, call.metric_attributes, monitor.ended_at or 0.0, extra
                    )
            except Exception:  # noqa: BLE001
                internal_error("retry bookkeeping")
            try:
                annotate_span(span, monitor, call.wall_start_ns, self.capture_content, extra)
            except Exception:  # noqa: BLE001
                internal_error("span annotation")
                _set_quietly(span, extra)  # what the failed step would have set with the summary
            try:
                response_model = self.limit_model(monitor.response_model) if monitor.response_model else None
                record_metrics(
                    self.instruments, monitor, call.metric_attributes, response_model, is_retry, self.ending_attributes
                )
            except Exception:  # noqa: BLE001 - a broken meter must not cost the span its ending
                internal_error("metric recording")
        finally:
            otel_context.detach(token)
            span.end()
