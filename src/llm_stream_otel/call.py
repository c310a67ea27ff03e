"""One instrumented streaming call: its span, its monitor, and its ending.

``StreamCall`` is what the proxy and the method wrapper share. Whatever
path a stream takes (consumed, broken, closed, garbage-collected, or the
request failing outright) ends in ``settle_*`` -> ``_finish``, which emits
telemetry exactly once: the first ending to pop the call's one token wins
(``list.pop`` is atomic, also on free-threaded CPython). A finalizer only
pops the token and hands the call off (``abandon_later``); see ``handoff``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from . import exit_hook, handoff
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
        "_token",
        "__weakref__",
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
        self._token = [True]  # popped by the one ending that wins
        self.wire: "Optional[WireWatch]" = None  # set by the method wrapper (see wire.py)
        exit_hook.track(self)

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
    def _claim(self) -> bool:
        """The atomic finish-once flip: True for exactly one caller."""
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    def settle(self, settle: Callable[[float], bool]) -> None:
        if self._claim():
            self._end(settle)
        if handoff.pending:
            handoff.drain()  # endings that finalizers handed off

    def _end(self, settle: Callable[[float], bool], at_exit: bool = False) -> None:
        try:
            self._read_wire()  # before the outcome is decided: was [DONE] the last event?
            settle(time.perf_counter())
            self._finish(at_exit)
        except Exception:  # noqa: BLE001 - our bug must not reach the app
            internal_error("stream finalization")
            self._end_span_quietly()
        finally:
            # Never keep the exception once recorded: its traceback holds our own
            # frames, which hold this call, a reference cycle that would leave the
            # SDK's suspended HTTP generators to the cyclic GC (openai 1.x/2.x on
            # httpcore can deadlock when the GC finalizes them inside the pool lock).
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
        self.settle(lambda now: self.monitor.fail_stream(now, exc))

    def stream_ended(self) -> None:
        self.settle(self.monitor.end)

    def abandoned(self) -> None:
        self.settle(self.monitor.abandon)

    def abandon_later(self) -> None:
        """From a finalizer: claim the call and hand it off; no lock, no telemetry."""
        now = time.perf_counter()
        if self._claim():
            handoff.hand_off(self, now)

    def end_abandoned(self, dropped_at: float) -> None:
        """A handed-off call (already claimed) ends, as abandoned when it was dropped."""
        self._end(lambda _now: self.monitor.abandon(dropped_at))

    def end_at_exit(self) -> None:
        """The interpreter is exiting with this stream still open."""
        if self._claim():
            self._end(self.monitor.abandon, at_exit=True)

    def _finish(self, at_exit: bool = False) -> None:
        """Every recording step on its own: one failing step costs only itself.

        Runs in the span's context, so that metric exemplars name this span."""
        self.done = True
        exit_hook.untrack(self)
        monitor = self.monitor
        telemetry = self.telemetry
        span = self.span
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            is_retry = False
            try:
                if self.attempt is not None:
                    is_retry = self.attempt.is_retry
                    telemetry.retries.finish(
                        self.attempt, monitor.outcome, span, self.metric_attributes, monitor.ended_at or 0.0
                    )
            except Exception:  # noqa: BLE001
                internal_error("retry bookkeeping")
            try:
                if span.is_recording():
                    if self.sdk_retries:
                        span.set_attribute(t.SDK_RETRIES, self.sdk_retries)
                    if at_exit:
                        span.set_attribute(t.ENDED_AT_EXIT, True)
                annotate_span(span, monitor, self.wall_start_ns, telemetry.settings.capture_content)
            except Exception:  # noqa: BLE001
                internal_error("span annotation")
            try:
                response_model = telemetry.limit_model(monitor.response_model) if monitor.response_model else None
                record_metrics(telemetry.instruments, monitor, self.metric_attributes, response_model, is_retry)
            except Exception:  # noqa: BLE001 - a broken meter must not cost the span its ending
                internal_error("metric recording")
        finally:
            otel_context.detach(token)
            span.end()

    def _end_span_quietly(self) -> None:
        try:
            self.done = True
            self.span.end()
        except Exception:  # noqa: BLE001
            internal_error("span end")

