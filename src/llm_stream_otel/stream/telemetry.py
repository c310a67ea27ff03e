"""Everything one instrumentor needs to start a stream's telemetry.

``StreamTelemetry.begin`` runs once per streaming call, before the request
is sent: it builds the span (linked to the attempt it retries), the
monitor and the metric attributes, so the per-chunk path has nothing left
to decide.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any, Mapping

from opentelemetry.trace import SpanKind, Tracer

from . import exit_hook, handoff
from .. import semconv as t
from .call import StreamCall
from ..config import CONTENT_CAPTURE_LIMIT, STALL_EVENT_LIMIT, Settings
from ..metrics.cardinality import CardinalityLimiter
from ..metrics.instruments import Instruments
from ..retries.attempts import RetryTracker
from ..retries.scope import retry_scope, scoped_key
from .metric_attributes import BaseAttributes
from .monitor import StreamMonitor
from .record import Recorder
from .span_start import start_span

if TYPE_CHECKING:  # pragma: no cover
    from ..providers.base import Provider


# The telemetry of the instrumentor that is active now, if any: the resilient
# helper records its parent span with the same tracer as the attempts.
_active: "list[StreamTelemetry]" = []


def active_telemetry() -> "StreamTelemetry | None":
    return _active[-1] if _active else None


def set_active(telemetry: "StreamTelemetry | None") -> None:
    _active.clear()
    if telemetry is not None:
        _active.append(telemetry)


class StreamTelemetry:
    """Tracer, instruments, settings and shared state of one instrumentor."""

    def __init__(self, tracer: Tracer, instruments: Instruments, settings: Settings) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.settings = settings
        self.limit_model = CardinalityLimiter(settings.max_attribute_values)
        self.limit_server = CardinalityLimiter(settings.max_attribute_values)
        self.base_attributes = BaseAttributes()
        self.retries = RetryTracker(instruments, settings.retry_window)
        self.recorder = Recorder(instruments, self.retries, self.limit_model, settings.capture_content)

    def metric_attributes(self, span_attributes: Mapping[str, Any]) -> dict:
        """The low-cardinality subset of the request attributes, for metrics (shared: never change it)."""
        model = span_attributes.get(t.GEN_AI_REQUEST_MODEL)
        server = span_attributes.get(t.SERVER_ADDRESS)
        return self.base_attributes.get(
            span_attributes[t.GEN_AI_OPERATION_NAME],
            span_attributes[t.GEN_AI_PROVIDER_NAME],
            self.limit_model(model) if model else None,
            self.limit_server(server) if server else None,
            span_attributes.get(t.SERVER_PORT) if server else None,
        )

    def begin(self, provider: "Provider", kind: str, instance: Any, kwargs: Mapping[str, Any]) -> StreamCall:
        """Start the span and monitor of one streaming call of ``provider``'s SDK."""
        handoff.ensure_drainer()
        exit_hook.register_at_first_stream()
        if handoff.pending:
            handoff.drain()
        request = provider.describe(kind, instance, kwargs)
        metric_attrs = self.metric_attributes(request.span_attributes)
        now = time.perf_counter()
        scope = retry_scope(self.settings.app_retries, provider.retry_client(instance))
        if scope is not None:
            key = partial(scoped_key, scope[0], provider.fingerprint, kind, request.base_url, kwargs)
            attempt = self.retries.start(None, now, metric_attrs, scope[1], key)
        else:
            attempt = self.retries.start(None, now, metric_attrs)
        name = f"{request.operation} {request.model}" if request.model else request.operation
        wall_start_ns = time.time_ns()
        span = start_span(self.tracer, name, SpanKind.CLIENT, request.span_attributes, attempt.links(), wall_start_ns)
        monitor = StreamMonitor(
            time.perf_counter(),
            self.settings.stall_threshold,
            t.SECONDS_BUCKETS,
            provider.reader(kind),
            STALL_EVENT_LIMIT,
            CONTENT_CAPTURE_LIMIT if self.settings.capture_content else 0,
            provider.finish_outcomes,
            provider.is_error_event,
            provider.notice_test(kind),
        )
        return StreamCall(self.recorder, span, monitor, metric_attrs, wall_start_ns, attempt)
