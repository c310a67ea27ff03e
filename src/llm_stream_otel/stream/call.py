"""One instrumented streaming call: its span, its monitor, and its ending.

``StreamCall`` is what the proxy and the method wrapper share. Whatever
path a stream takes (consumed, broken, closed, garbage-collected, or the
request failing outright) ends in ``settle_*`` -> ``_finish``, which hands the
call to its ``Recorder`` exactly once: the first ending to pop the call's one token wins
(``list.pop`` is atomic, also on free-threaded CPython). A finalizer only
pops the token and hands the call off (``abandon_later``); see ``handoff``.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from . import exit_hook, handoff
from ..guard import internal_error
from .monitor import StreamMonitor

# The StreamCall whose request is being sent, if any: a provider's SDK-retry
# hook charges the retries it sees to it (``StreamCall.sdk_retry``).
current_call: "contextvars.ContextVar[Optional[StreamCall]]" = contextvars.ContextVar(
    "llm_stream_otel_current_call", default=None
)

if TYPE_CHECKING:  # pragma: no cover
    from ..retries.attempts import Attempt
    from .record import Recorder


class _Activation:
    """``with call.activated():`` what ``trace.use_span(span, end_on_exit=False,
    record_exception=False, set_status_on_exception=False)`` does (attach the
    span's context, detach it after), plus ``current_call``, without two
    generator-based context managers per request."""

    __slots__ = ("_call", "_tokens")

    def __init__(self, call: "StreamCall") -> None:
        self._call = call

    def __enter__(self) -> None:
        call = self._call
        token = current_call.set(call)
        try:
            self._tokens = (token, otel_context.attach(trace.set_span_in_context(call.span)))
        except BaseException:
            current_call.reset(token)
            raise

    def __exit__(self, *exc_info: Any) -> None:
        token, context_token = self._tokens
        try:
            otel_context.detach(context_token)
        finally:
            current_call.reset(token)


class StreamCall:
    """State shared by the method wrapper and the stream proxy of one call."""

    __slots__ = (
        "recorder",
        "span",
        "monitor",
        "metric_attributes",
        "wall_start_ns",
        "attempt",
        "sdk_retries",
        "_token",
        "__weakref__",
        "wire",
    )

    def __init__(
        self,
        recorder: "Recorder",
        span: Span,
        monitor: StreamMonitor,
        metric_attributes: Dict[str, Any],
        wall_start_ns: int,
        attempt: "Optional[Attempt]" = None,
    ) -> None:
        self.recorder = recorder
        self.span = span
        self.monitor = monitor
        self.metric_attributes = metric_attributes
        self.wall_start_ns = wall_start_ns
        self.attempt = attempt
        self.sdk_retries = 0
        self._token = [True]  # popped by the one ending that wins
        self.wire: Any = None  # a provider's wire observer, set by the method wrapper
        exit_hook.track(self)

    def activated(self) -> "_Activation":
        """While the request is sent: our span is current (child HTTP spans nest
        under it) and SDK retries are charged to this call."""
        return _Activation(self)

    def sdk_retry(self, retry_count: int) -> None:
        """The SDK is sending retry number ``retry_count`` of this request."""
        if retry_count > self.sdk_retries:
            self.recorder.sdk_retries(retry_count - self.sdk_retries, self.metric_attributes)
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
        """Once, when the stream ends: what the provider's wire observer saw (openai: was [DONE] the last event?)."""
        wire = self.wire
        if wire is None:
            return
        self.wire = None
        try:
            wire.observe(self.monitor)
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
        exit_hook.untrack(self)
        self.recorder.finish(self, at_exit)

    def _end_span_quietly(self) -> None:
        try:
            self.span.end()
        except Exception:  # noqa: BLE001
            internal_error("span end")

