"""One instrumented streaming call: its span, its monitor, and its ending.

``StreamCall`` is what the proxy and the method wrapper share. Whatever
path a stream takes (consumed, broken, closed, garbage-collected, or the
request failing outright) ends in ``settle_*`` -> ``_finish``, which emits
telemetry exactly once.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional

from opentelemetry import trace
from opentelemetry.trace import Span

from . import telemetry as t
from .guard import internal_error
from .monitor import StreamMonitor
from .recorder import annotate_span, record_metrics
from .sdk_retries import current_call
from .wire import WireWatch, read_wire

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import StreamTelemetry
    from .retries import Attempt


class StreamCall:
    """State shared by the method wrapper and the stream proxy of one call."""

    __slots__ = (
        "telemetry",
        "span",
        "monitor",
        "metric_attributes",
        "wall_start_ns",
        "attempt",
        "sdk_retries",
        "done",
        "wire",
    )

    def __init__(
        self,
        telemetry: "StreamTelemetry",
        span: Span,
        monitor: StreamMonitor,
        metric_attributes: Dict[str, Any],
        wall_start_ns: int,
        attempt: "Optional[Attempt]" = None,
    ) -> None:
        self.telemetry = telemetry
        self.span = span
        self.monitor = monitor
        self.metric_attributes = metric_attributes
        self.wall_start_ns = wall_start_ns
        self.attempt = attempt
        self.sdk_retries = 0
        self.done = False
        self.wire: "Optional[WireWatch]" = None  # set by the method wrapper (see wire.py)

    @contextmanager
    def activated(self) -> Iterator[None]:
        """While the request is sent: our span is current (child HTTP spans nest
        under it) and SDK retries are charged to this call."""
        token = current_call.set(self)
        try:
            with trace.use_span(self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                yield
        finally:
            current_call.reset(token)

    def sdk_retry(self, retry_count: int) -> None:
        """The SDK is sending retry number ``retry_count`` of this request."""
        if retry_count > self.sdk_retries:
            self.telemetry.instruments.retries.add(
                retry_count - self.sdk_retries, {**self.metric_attributes, t.RETRY_LAYER: t.RETRY_LAYER_SDK}
            )
            self.sdk_retries = retry_count

    # --- endings: each is safe to call many times, and never raises -----------
    def settle(self, settle: Callable[[float], bool]) -> None:
        try:
            if settle(time.perf_counter()):
                self._finish()
        except Exception:  # noqa: BLE001 - our bug must not reach the app
            internal_error("stream finalization")
            self._end_span_quietly()
        finally:
            # Never keep the exception once recorded: its traceback holds our own
            # frames, which hold this call, a reference cycle that would leave the
            # SDK's suspended HTTP generators to the cyclic GC (openai 1.x/2.x on
            # httpcore can deadlock when the GC finalizes them inside the pool lock).
            if self.done:
                try:
                    self.monitor.error = None
                except Exception:  # noqa: BLE001
                    pass

    def _read_wire(self) -> None:
        """Once, when the stream ends: what its last SSE event was (see wire.py)."""
        wire = self.wire
        if wire is None:
            return
        self.wire = None
        try:
            read_wire(self.monitor, wire)
        except Exception:  # noqa: BLE001
            internal_error("wire observation")
        finally:
            wire.release()

    def request_failed(self, exc: BaseException) -> None:
        self.settle(lambda now: self.monitor.fail_request(now, exc))

    def stream_failed(self, exc: BaseException) -> None:
        self._read_wire()
        self.settle(lambda now: self.monitor.fail_stream(now, exc))

    def stream_ended(self) -> None:
        self._read_wire()
        self.settle(self.monitor.end)

    def abandoned(self) -> None:
        if not self.done:
            self._read_wire()
            self.settle(self.monitor.abandon)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        monitor = self.monitor
        telemetry = self.telemetry
        is_retry = False
        try:
            if self.attempt is not None:
                is_retry = self.attempt.is_retry
                telemetry.retries.finish(
                    self.attempt, monitor.outcome, self.span, self.metric_attributes, monitor.ended_at or 0.0
                )
            if self.sdk_retries and self.span.is_recording():
                self.span.set_attribute(t.SDK_RETRIES, self.sdk_retries)
            annotate_span(self.span, monitor, self.wall_start_ns, telemetry.settings.capture_content)
            response_model = telemetry.limit_model(monitor.response_model) if monitor.response_model else None
            try:
                record_metrics(telemetry.instruments, monitor, self.metric_attributes, response_model, is_retry)
            except Exception:  # noqa: BLE001 - a broken meter must not cost the span its ending
                internal_error("metric recording")
        finally:
            self.span.end()

    def _end_span_quietly(self) -> None:
        try:
            if not self.done:
                self.done = True
                self.span.end()
        except Exception:  # noqa: BLE001
            internal_error("span end")

