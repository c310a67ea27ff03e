"""Start a stream's span with its request attributes written by the span fast path.

Why: ``Tracer.start_span(attributes=...)`` cleans every attribute one by one
(``BoundedAttributes.__setitem__``: a lock, type checks and a copy each):
about 60,000 instructions (callgrind) for a request's seven attributes, half
the cost of starting and ending the span itself. Two things may look at the
attributes while the span starts: the sampler and the span processors'
``on_start``. Where neither does, starting the span without them and writing
them at once through ``span_fast_path`` leaves the same span: the same
attributes, in the same order, with the same types and dropped count.

So this is used only where that holds, checked once per tracer (and again
when its processors change): the SDK's own tracer, a sampler made only of the
SDK's static, trace-id-ratio and parent-based samplers (their decisions never
read the attributes, and a recording span gets exactly the attributes passed
in), and span processors whose ``on_start`` is the SDK's own ``Simple`` or
``Batch`` processor's, which does nothing. Anything else (another sampler, a
processor of the user's, another SDK) gets the attributes at ``start_span``
as before. A self-test on the installed SDK proves the equivalence first;
``OTEL_INSTRUMENTATION_LLM_STREAM_SPAN_FAST_PATH=false`` turns both off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from opentelemetry.trace import Span, SpanKind, Tracer

from . import span_fast_path

_logger = logging.getLogger(__name__)

_state = "unknown"  # unknown | proven | unusable
_lock = threading.Lock()
_sdk: Optional[Dict[str, Any]] = None
# id(tracer) -> (tracer, its processors tuple when checked, answer)
_tracers: Dict[int, Tuple[Any, Any, bool]] = {}


def start_span(
    tracer: Tracer, name: str, kind: SpanKind, attributes: Mapping[str, Any], links: Sequence[Any], start_time: int
) -> Span:
    """``tracer.start_span(name, kind=kind, attributes=attributes, links=links, start_time=start_time)``."""
    if _deferrable(tracer):
        span = tracer.start_span(name, kind=kind, links=links, start_time=start_time)
        span_fast_path.set_span_attributes(span, attributes)
        return span
    return tracer.start_span(name, kind=kind, attributes=attributes, links=links, start_time=start_time)


def _deferrable(tracer: Any) -> bool:
    """May this tracer's spans get their attributes right after they start?"""
    if not span_fast_path._enabled:
        return False
    known = _tracers.get(id(tracer))
    if known is not None and known[0] is tracer:
        processor = getattr(tracer, "span_processor", None)
        if known[1] is getattr(processor, "_span_processors", None):
            return known[2]
    if not span_fast_path.proven() or not proven():
        return False
    try:
        processors = tracer.span_processor._span_processors
        answer = _allowed(tracer, _sdk)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - not the SDK's tracer: the attributes at start
        processors, answer = None, False
    if len(_tracers) >= 64:
        _tracers.clear()
    _tracers[id(tracer)] = (tracer, processors, answer)
    return answer


def _allowed(tracer: Any, sdk: Dict[str, Any]) -> bool:
    if type(tracer) is not sdk["Tracer"] or type(tracer.span_processor) not in sdk["multi"]:
        return False
    if not all(type(p).on_start in sdk["on_start"] for p in tracer.span_processor._span_processors):
        return False
    return _blind(tracer.sampler, sdk, 0)


def _blind(sampler: Any, sdk: Dict[str, Any], depth: int) -> bool:
    """A sampler whose decision does not read the attributes and that passes them on unchanged."""
    method = type(sampler).should_sample
    if method in sdk["leaf_samplers"]:
        return True
    if method is sdk["ParentBased"].should_sample and depth < 2:
        delegates = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled", "_local_parent_not_sampled")
        return all(_blind(getattr(sampler, name), sdk, depth + 1) for name in delegates)
    return False


def _load() -> Dict[str, Any]:
    from opentelemetry.sdk.trace import ConcurrentMultiSpanProcessor, SynchronousMultiSpanProcessor
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, StaticSampler, TraceIdRatioBased

    return {
        "Tracer": SdkTracer,
        "multi": (SynchronousMultiSpanProcessor, ConcurrentMultiSpanProcessor),
        "on_start": (SimpleSpanProcessor.on_start, BatchSpanProcessor.on_start),
        "leaf_samplers": (StaticSampler.should_sample, TraceIdRatioBased.should_sample),
        "ParentBased": ParentBased,
    }


def proven() -> bool:
    global _sdk, _state
    if _state == "unknown":
        with _lock:
            if _state == "unknown":
                try:
                    sdk = _load()
                    ok = _self_test(sdk)
                except Exception:  # noqa: BLE001 - another SDK: the attributes at start
                    _logger.debug("llm_stream_otel: span start fast path unavailable", exc_info=True)
                    ok = False
                if ok:
                    _sdk = sdk
                _state = "proven" if ok else "unusable"
    return _state == "proven"


def _self_test(sdk: Dict[str, Any]) -> bool:
    """On this SDK: the same span either way, for the samplers and limits the fast path admits."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBasedTraceIdRatio

    class _Drop(SpanExporter):
        def export(self, spans: Any) -> Any:
            return SpanExportResult.SUCCESS

    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m",
        "server.address": "127.0.0.1",
        "server.port": 443,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.stream": True,
        "gen_ai.request.stop_sequences": ["a", "b"],
    }

    def seen(span: Any) -> Any:
        return [(k, type(v), v) for k, v in span.attributes.items()], span.dropped_attributes, span.is_recording()

    # (Limits that would cut or drop: span_fast_path steps aside to set_attributes, its own self-test proves it.)
    for sampler in (ALWAYS_ON, ParentBasedTraceIdRatio(1.0)):
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(_Drop()))
        tracer = provider.get_tracer("llm_stream_otel.selftest")
        if not _allowed(tracer, sdk):
            return False
        public = tracer.start_span("s", kind=SpanKind.CLIENT, attributes=attributes, links=(), start_time=1)
        fast = tracer.start_span("s", kind=SpanKind.CLIENT, links=(), start_time=1)
        span_fast_path.set_span_attributes(fast, attributes)
        if seen(fast) != seen(public):
            return False
        provider.shutdown()
    return True
