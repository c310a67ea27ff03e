"""The opt-in resilient stream: the well-known fix (retry a cut stream with
exponential backoff), done properly and instrumented.

    from .resilient import resilient_stream
    for chunk in resilient_stream(client.chat.completions.create, model=..., messages=...):
        ...
    for chunk in resilient_stream(client.models.generate_content_stream, model=..., contents=...):
        ...

- Retries only transient cuts (reset, incomplete read, read timeout, error
  event, missing terminator) and requests that failed with a connection
  error, a timeout, 408/409/429 or 5xx; never ``length``,
  ``content_filter`` or another 4xx.
- Exponential backoff with jitter, a maximum number of attempts and a total
  deadline.
- Works for each provider's streaming method (``Provider.kind_of``
  picks the SDK's rules: how to ask for a stream, how to read its chunks,
  its finish reasons and errors; openai's where none claims it).
- ``mode="restart"`` starts a fresh stream (``on_restart`` tells the UI to
  discard what it showed); ``mode="continue"`` (openai chat completions,
  anthropic messages) asks the model to continue from the partial text
  already delivered (openai: a user turn asking to continue; anthropic: the
  partial text as the assistant's prefill), so the consumer only receives
  the missing part.
- Works with the SDK method's provider (openai, anthropic): its chunk
  reader and rules judge each attempt, so an anthropic ``overloaded_error``
  event mid-stream is a transient cut (``error_event``) and is retried.
- When it gives up it re-raises the last underlying exception unchanged, or
  raises ``StreamTruncatedError`` for a cut that raised nothing.
- With the instrumentor active, every attempt is a child span of one
  ``resilient`` span, repeats count as ``llm.stream.retries{layer="helper"}``
  and a success after a cut counts one recovery.

The retry decisions live in ``ResilientRun`` (no I/O); the sync and async
generators are thin loops around it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import semconv as t
from .providers import installed
from .providers.base import Provider
from .stream.monitor import StreamMonitor
from .stream.telemetry import active_telemetry
from .retries.attempts import chain_override
from .version import __version__

TRANSIENT_REASONS = frozenset(
    {
        t.REASON_CONNECTION_RESET,
        t.REASON_INCOMPLETE_READ,
        t.REASON_READ_TIMEOUT,
        t.REASON_ERROR_EVENT,
        t.REASON_MISSING_TERMINATOR,
    }
)
_RETRYABLE_STATUS = frozenset({408, 409, 429})
CONTINUE_PROMPT = "Continue exactly where your previous message stopped. Do not repeat any of it."


class StreamTruncatedError(Exception):
    """The stream was cut every time and the cut raised no exception of its own
    (e.g. ``missing_terminator``); ``reason`` says how the last attempt ended."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(f"stream truncated ({reason}) after {attempts} attempt(s)")
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Delays: ``initial_backoff * 2**(n-1)`` capped at
    ``max_backoff``, times a random factor in [0.5, 1] when ``jitter``."""

    max_attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    deadline: float = 120.0
    jitter: bool = True
    mode: str = "restart"
    continue_prompt: str = CONTINUE_PROMPT

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        delay = min(self.max_backoff, self.initial_backoff * (2 ** (retry_number - 1)))
        return delay * rng.uniform(0.5, 1.0) if self.jitter else delay


_CONNECT_NAMES = frozenset({"APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout", "ClientConnectorError"})


def _retryable_request_failure(exc: BaseException, provider: Provider) -> bool:
    status = provider.http_status(exc)
    if isinstance(status, int):
        return status >= 500 or status in _RETRYABLE_STATUS
    names = {klass.__name__ for klass in type(exc).__mro__}
    return bool(names & _CONNECT_NAMES) or isinstance(exc, (ConnectionError, TimeoutError))


@lru_cache(maxsize=1)
def _providers() -> Tuple[Provider, ...]:
    return tuple(installed())


def _provider_of(create: Callable[..., Any], kwargs: Dict[str, Any]) -> Tuple[Provider, str]:
    """The provider whose SDK ``create`` belongs to, and the kind of method it is.

    A callable no provider recognises (a function of the app's own) is read
    as openai: Responses when called with ``input`` alone, else chat.
    """
    providers = _providers()
    for provider in providers:
        kind = provider.kind_of(create)
        if kind is not None:
            return provider, kind
    fallback = next((p for p in providers if p.name == t.PROVIDER_OPENAI), None)
    if fallback is None:
        from .providers.openai import OpenAIProvider

        fallback = OpenAIProvider()
    return fallback, ("responses" if "input" in kwargs and "messages" not in kwargs else "chat")


class ResilientRun:
    """The decisions of one resilient call: what to send, whether to retry,
    how long to wait. Knows nothing of sync vs async."""

    def __init__(
        self,
        create: Callable[..., Any],
        kwargs: Dict[str, Any],
        policy: RetryPolicy,
        on_restart: Optional[Callable[[int, str], None]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        if policy.mode not in ("restart", "continue"):
            raise ValueError("mode must be 'restart' or 'continue'")
        if policy.mode == "continue" and "messages" not in kwargs:
            raise ValueError("mode='continue' needs chat completions or messages (a 'messages' argument)")
        self.provider, self.kind = _provider_of(create, kwargs)
        kwargs = self.provider.stream_request(kwargs)
        self.create = create
        self.kwargs = kwargs
        self.policy = policy
        self.on_restart = on_restart
        self.rng = rng or random.Random()
        self.chain_key = os.urandom(16)
        self.attempt = 0
        self.started = time.monotonic()
        self.delays: List[float] = []
        self.delivered: List[str] = []
        self.overlap = ""  # text a continuation repeats at its start (anthropic: the whitespace cut off the prefill)
        self.monitor: Optional[StreamMonitor] = None
        self.span: Any = trace.INVALID_SPAN  # started by the first attempt: a helper never iterated has none
        self._ended = False

    # --- one attempt ---------------------------------------------------------
    def _start_span(self) -> None:
        active = active_telemetry()
        tracer = active.tracer if active is not None else trace.get_tracer(t.SCOPE_NAME, __version__)
        self.span = tracer.start_span(f"resilient {self.kwargs.get('model', '')}".strip(), kind=SpanKind.INTERNAL)

    def next_request(self) -> Dict[str, Any]:
        if self.attempt == 0:
            self._start_span()
        self.attempt += 1
        provider, kind = self.provider, self.kind
        self.monitor = StreamMonitor(
            time.perf_counter(),
            float("inf"),
            reader=provider.reader(kind),
            finish_outcomes=provider.finish_outcomes,
            is_error_event=provider.is_error_event,
            is_notice=provider.notice_test(kind),
        )
        if self.policy.mode == "continue" and self.delivered:
            request, self.overlap = provider.continuation(
                kind, self.kwargs, "".join(self.delivered), self.policy.continue_prompt
            )
            return request
        return dict(self.kwargs)

    def attempt_context(self) -> Any:
        """Around ``create``: the attempt is a child of our span, in our chain."""
        return _AttemptContext(self)

    def observe(self, chunk: Any) -> Any:
        """Note one chunk; returns the chunk to give the consumer (continue mode may trim a repeat)."""
        assert self.monitor is not None
        self.monitor.chunk(time.perf_counter(), chunk)
        if self.policy.mode == "continue":
            text = self.provider.delta_text(self.kind, chunk)
            if text is not None:
                if self.overlap:
                    chunk = self.provider.without_prefix(self.kind, chunk, self.overlap)
                    text = text[len(self.overlap):] if text.startswith(self.overlap) else text
                    self.overlap = ""
                self.delivered.append(text)
        return chunk

    # --- after an attempt: None = done, a float = sleep then retry ------------
    def ended(self) -> Optional[float]:
        monitor = self.monitor
        assert monitor is not None
        monitor.end(time.perf_counter())
        if monitor.outcome != t.OUTCOME_TRUNCATED:
            self.finish(None)
            return None
        return self._retry_or_give_up(monitor.reason or t.REASON_OTHER, None)

    def failed(self, exc: BaseException) -> float:
        monitor = self.monitor
        assert monitor is not None
        now = time.perf_counter()
        retryable_failure = _retryable_request_failure(exc, self.provider)
        if monitor.chunks == 0 and not retryable_failure and not isinstance(exc, StopIteration):
            monitor.fail_request(now, exc)
            reason = "request_failed"
            retryable = False
        else:
            monitor.fail_stream(now, exc)
            reason = monitor.reason or t.REASON_OTHER
            retryable = reason in TRANSIENT_REASONS or (monitor.chunks == 0 and retryable_failure)
        delay = self._retry_or_give_up(reason, exc) if retryable else None
        if delay is None:
            self.finish(exc)
            raise exc
        return delay

    def _retry_or_give_up(self, reason: str, exc: Optional[BaseException]) -> Optional[float]:
        policy = self.policy
        if reason not in TRANSIENT_REASONS and exc is None:
            self.finish(None)
            return None
        if self.attempt < policy.max_attempts:
            delay = policy.backoff(self.attempt, self.rng)
            if time.monotonic() - self.started + delay <= policy.deadline:
                self.delays.append(delay)
                self.span.add_event("llm.stream.retry", {t.ATTEMPT: self.attempt, t.TRUNCATION_REASON: reason, "llm.stream.backoff": delay})
                if policy.mode == "restart" and self.on_restart is not None:
                    self.on_restart(self.attempt + 1, reason)
                return delay
        if exc is None:
            error = StreamTruncatedError(reason, self.attempt)
            self.finish(error)
            raise error
        return None

    def finish(self, exc: Optional[BaseException]) -> None:
        """The run's result decides the status; messages stay out of the span (privacy)."""
        span = self.span
        if self._ended or not span.is_recording():
            return
        self._ended = True
        outcome = self.monitor.outcome if self.monitor is not None else None
        span.set_attribute(t.ATTEMPT, self.attempt)
        span.set_attribute(t.OUTCOME, outcome or t.OUTCOME_ABANDONED)
        if self.attempt > 1 and exc is None and outcome in (t.OUTCOME_COMPLETED, t.OUTCOME_LENGTH, t.OUTCOME_CONTENT_FILTER):
            span.set_attribute(t.RECOVERED_AFTER_ATTEMPTS, self.attempt)
        if exc is not None:
            span.set_attribute(t.ERROR_TYPE, type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"gave up after {self.attempt} attempt(s)"))
        span.end()

    def abandon(self) -> None:
        """The run stopped without a result (generator closed, task cancelled, interrupted)."""
        if not self._ended and self.span.is_recording():
            self._ended = True
            self.span.set_attribute(t.ATTEMPT, self.attempt)
            self.span.set_attribute(t.OUTCOME, t.OUTCOME_ABANDONED)
            self.span.end()


class _AttemptContext:
    def __init__(self, run: ResilientRun) -> None:
        self._run = run
        self._tokens: List[Any] = []

    def __enter__(self) -> None:
        # An attempt's exception must not mark the run ERROR (it may recover) nor
        # export its message: the run's result sets the status (``finish``).
        self._span_cm = trace.use_span(
            self._run.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        self._span_cm.__enter__()
        self._token = chain_override.set((self._run.chain_key, t.RETRY_LAYER_HELPER))

    def __exit__(self, *exc: Any) -> None:
        chain_override.reset(self._token)
        self._span_cm.__exit__(*exc)


def _close_quietly(stream: Any) -> Any:
    close = getattr(stream, "close", None)
    return close() if callable(close) else None


async def _aclose_quietly(stream: Any) -> None:
    """openai's ``AsyncStream`` closes with ``close()``, an async generator (google-genai's) with
    ``aclose()``; the SDK object's own method decides (our proxy forwards both)."""
    inner = getattr(stream, "__wrapped__", stream)
    close = getattr(stream, "close" if callable(getattr(inner, "close", None)) else "aclose", None)
    if callable(close):
        await close()


def resilient_stream(
    create: Callable[..., Any],
    *,
    policy: Optional[RetryPolicy] = None,
    on_restart: Optional[Callable[[int, str], None]] = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """Stream ``create(**kwargs, stream=True)``, retrying cuts. A generator of chunks."""
    return _sync_loop(ResilientRun(create, kwargs, policy or RetryPolicy(), on_restart))


def _sync_loop(run: ResilientRun) -> Iterator[Any]:
    stream = None
    try:
        while True:
            request = run.next_request()
            try:
                with run.attempt_context():
                    stream = run.create(**request)
                for chunk in stream:
                    yield run.observe(chunk)
                delay = run.ended()
            except Exception as exc:  # noqa: BLE001 - re-raised by failed() unless retried
                delay = run.failed(exc)
            if delay is None:
                return
            time.sleep(delay)
    finally:
        # Every way out (result, give-up, close, KeyboardInterrupt): the inner
        # stream is closed and the span ended (as abandoned if no result came).
        try:
            if stream is not None:
                _close_quietly(stream)
        finally:
            run.abandon()


def aresilient_stream(create: Callable[..., Any], **options: Any) -> AsyncIterator[Any]:
    """Async twin of ``resilient_stream`` (``AsyncOpenAI``, ``client.aio.models``; same arguments)."""
    policy = options.pop("policy", None)
    on_restart = options.pop("on_restart", None)
    return _async_loop(ResilientRun(create, options, policy or RetryPolicy(), on_restart))


async def _async_loop(run: ResilientRun) -> AsyncIterator[Any]:
    stream = None
    try:
        while True:
            request = run.next_request()
            try:
                with run.attempt_context():
                    stream = await run.create(**request)
                async for chunk in stream:
                    yield run.observe(chunk)
                delay = run.ended()
            except Exception as exc:  # noqa: BLE001 - re-raised by failed() unless retried
                delay = run.failed(exc)
            if delay is None:
                return
            await asyncio.sleep(delay)
    finally:
        # Also on cancellation (CancelledError is no Exception).
        try:
            if stream is not None:
                await _aclose_quietly(stream)
        finally:
            run.abandon()
