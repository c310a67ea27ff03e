"""Retry attempts at every layer, and the fix-rate bookkeeping.

Layers:
- ``sdk``: the openai client re-sends a failed request itself before any
  chunk arrives; we see each re-send as a request whose
  ``x-stainless-retry-count`` header is above zero (see ``providers/stainless.py``).
- ``application``: the app calls ``create`` again with the same request
  within the retry window after a truncated or failed attempt, in the same
  trace, or (untraced) from the same client and thread/task (``retry_scope``).
- ``helper``: our own resilient helper retried (it marks its attempts).

Fix rate = recoveries / first attempts that were truncated. A chain of
attempts ("cut, cut, ok") counts one truncated call and, when a later
attempt completes, one recovery.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from opentelemetry.trace import Link, Span, SpanContext

from .. import semconv as t
from ..guard import internal_error
from ..metrics.instruments import Instruments

DEFAULT_TABLE_SIZE = 10_000

# Set by the resilient helper around each attempt it makes: the key of its
# chain of attempts (a "continue" attempt is a different request, so the
# request fingerprint alone would not recognise it) and the helper layer.
chain_override: "contextvars.ContextVar[Optional[Tuple[bytes, str]]]" = contextvars.ContextVar(
    "llm_stream_otel_chain", default=None
)

_FAILURES = (t.OUTCOME_TRUNCATED, t.OUTCOME_FAILED)
_SUCCESSES = (t.OUTCOME_COMPLETED, t.OUTCOME_LENGTH, t.OUTCOME_CONTENT_FILTER)


@dataclass
class _Chain:
    """What we remember about a request whose last attempt was cut or failed."""

    attempts: int
    last_at: float
    last_span: Optional[SpanContext]
    first_truncated: bool


@dataclass
class Attempt:
    """One attempt of a (possibly repeated) request."""

    fingerprint: Optional[bytes]
    number: int
    is_retry: bool
    layer: Optional[str]
    link: Optional[SpanContext]
    started_at: float
    first_truncated: bool = False
    evidence: Optional[str] = None  # trace | fingerprint, for application retries
    # The key, not built yet (``retries.scope.scoped_key``): built at the end only if the attempt is cut or fails.
    later_key: Optional[Callable[[], Optional[bytes]]] = None

    def key(self) -> Optional[bytes]:
        """The attempt's key in the retry table, built now if it was left for later."""
        if self.fingerprint is None and self.later_key is not None:
            later, self.later_key = self.later_key, None
            self.fingerprint = later()
        return self.fingerprint

    def links(self) -> list:
        return [Link(self.link, {t.ATTEMPT: self.number - 1})] if self.link is not None else []


def _add(counter: object, attributes: dict) -> None:
    """Count one; a broken meter must not cost a stream its span."""
    try:
        counter.add(1, attributes)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        internal_error("metric recording")


class RetryTracker:
    """Recognise repeats of cut/failed requests; count retries and recoveries.

    Memory is bounded: only requests whose last attempt failed are kept, at
    most ``max_entries`` of them, each for ``window`` seconds.
    """

    def __init__(self, instruments: Instruments, window: float, max_entries: int = DEFAULT_TABLE_SIZE) -> None:
        self._instruments = instruments
        self._window = window
        self._max_entries = max_entries
        self._chains: "OrderedDict[bytes, _Chain]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chains)

    def _expire(self, now: float) -> None:
        chains = self._chains
        while chains:
            key, chain = next(iter(chains.items()))
            if now - chain.last_at <= self._window and len(chains) <= self._max_entries:
                break
            chains.popitem(last=False)

    def start(
        self,
        fingerprint: Optional[bytes],
        now: float,
        metric_attributes: dict,
        evidence: Optional[str] = None,
        later_key: Optional[Callable[[], Optional[bytes]]] = None,
    ) -> Attempt:
        """A new attempt begins: is it a repeat of a cut or failed one?

        ``fingerprint`` is the scoped key of the request (see retry_scope), or
        ``later_key`` builds it: only now if a cut or failed request waits in the
        table (it may be this one's), else at the end if this attempt is cut or
        fails (about 30,000 instructions a call saved while nothing fails).
        ``evidence``: what scoped it. Neither key: no application retry attribution.
        """
        override = chain_override.get()
        layer = t.RETRY_LAYER_APPLICATION
        if override is not None:
            fingerprint, layer = override
            evidence = None
            later_key = None
        elif later_key is not None and self._chains:
            fingerprint, later_key = later_key(), None
        chain = None
        if fingerprint is not None:
            with self._lock:
                self._expire(now)
                chain = self._chains.get(fingerprint)
        if chain is None:
            return Attempt(fingerprint, 1, False, None, None, now, later_key=later_key)
        _add(self._instruments.retries, {**metric_attributes, t.RETRY_LAYER: layer})
        return Attempt(
            fingerprint, chain.attempts + 1, True, layer, chain.last_span, now, chain.first_truncated, evidence
        )

    def finish(
        self,
        attempt: Attempt,
        outcome: Optional[str],
        span: Span,
        metric_attributes: dict,
        now: float,
        span_attributes: Optional[dict] = None,
    ) -> None:
        """An attempt settled: remember a failure, or count a recovery.

        The attempt's span attributes go into ``span_attributes`` when given
        (the caller sets them with the span's others, in one call: each
        ``set_attribute`` takes the span's lock and cleans its value), else
        straight onto the span."""
        if attempt.fingerprint is None and attempt.later_key is None:
            return
        attrs: dict = {} if span_attributes is None else span_attributes
        attrs[t.ATTEMPT] = attempt.number
        attrs[t.IS_RETRY] = attempt.is_retry
        if attempt.layer:
            attrs[t.RETRY_LAYER] = attempt.layer
        if attempt.is_retry and attempt.evidence:
            attrs[t.RETRY_EVIDENCE] = attempt.evidence
        try:
            self._settle(attempt, outcome, span, metric_attributes, now, attrs)
        finally:
            if span_attributes is None and span.is_recording():
                span.set_attributes(attrs)

    def _settle(
        self, attempt: Attempt, outcome: Optional[str], span: Span, metric_attributes: dict, now: float, attrs: dict
    ) -> None:
        if outcome in _FAILURES:
            key = attempt.key()
            if key is None:
                return  # no fingerprint of this request: a repeat of it cannot be recognised
            first_truncated = attempt.first_truncated if attempt.is_retry else outcome == t.OUTCOME_TRUNCATED
            with self._lock:
                self._chains.pop(key, None)
                self._chains[key] = _Chain(
                    attempt.number, now, span.get_span_context(), first_truncated
                )
                self._expire(now)
            return
        if outcome in _SUCCESSES and attempt.is_retry:
            with self._lock:
                chain = self._chains.pop(attempt.fingerprint, None)
            if chain is not None and chain.first_truncated:
                _add(self._instruments.recoveries, metric_attributes)
                attrs[t.RECOVERED_AFTER_ATTEMPTS] = attempt.number
