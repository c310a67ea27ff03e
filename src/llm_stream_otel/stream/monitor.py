"""A pure state machine for one stream: timing, chunk facts and the outcome.

It knows nothing of patching or OpenTelemetry: the proxy feeds it events
with timestamps (``chunk``, ``error``, ``end``, ``abandon``, ``fail``) and
the recorder reads the result. That keeps the classification testable
without a network and keeps the per-chunk hot path small: a few float
operations and one ``bisect`` per chunk, state of constant size.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import takewhile
from math import nextafter
from typing import Any, Callable, List, Mapping, Optional, Sequence, Set, Tuple

from .. import semconv as t
from .outcome import error_type, never, outcome_for_finish_reason, truncation_reason

ChunkReader = Callable[["StreamMonitor", Any], None]
# Is this chunk a service notification (``message_start``, ``response.created``)
# rather than a generated packet? Asked only until the first generated chunk.
NoticeTest = Callable[[Any], bool]

# When choices end with different reasons (n > 1), the most severe wins.
_INF = float("inf")

# Without a provider's table (tests of the state machine alone): the common words.
DEFAULT_FINISH_OUTCOMES = {
    "stop": t.OUTCOME_COMPLETED,
    "length": t.OUTCOME_LENGTH,
    "content_filter": t.OUTCOME_CONTENT_FILTER,
}

_OUTCOME_SEVERITY = {t.OUTCOME_COMPLETED: 0, t.OUTCOME_LENGTH: 1, t.OUTCOME_CONTENT_FILTER: 2}


_chains: dict = {}  # (id(bounds), threshold) -> (bounds, chain): every stream of an instrumentor asks the same


def _chain(bounds: Sequence[float], stall_threshold: float) -> Tuple[int, float, float, float, float]:
    """The compare chain's length and boundaries (see ``StreamMonitor.chunk``), worked out once."""
    key = (id(bounds), stall_threshold)
    found = _chains.get(key)
    if found is None or found[0] is not bounds:
        chain = list(takewhile(lambda bound: bound <= stall_threshold, bounds[:4]))
        padded = (tuple(chain) + (-_INF,) * 4)[:4]
        if len(_chains) >= 64:
            _chains.clear()
        found = _chains[key] = (bounds, (len(chain), *padded))
    return found[1]


def _ignore_chunk(monitor: "StreamMonitor", chunk: Any) -> None:
    """Reader for streams whose chunks we do not understand: timing only."""


class StreamMonitor:
    """Everything we learn about one stream, in O(1) space."""

    __slots__ = (
        "started_at",
        "stall_threshold",
        "bucket_bounds",
        "reader",
        "is_notice",
        "notices",
        "notice_at",
        "first_at",
        "last_at",
        "ended_at",
        "max_gap",
        "stalls",
        "stall_events",
        "stall_event_limit",
        "gap_counts",
        "bound_0",
        "bound_1",
        "bound_2",
        "bound_3",
        "chain_length",
        "gap_min",
        "gap_max",
        "finish_reasons",
        "finished_choices",
        "max_choice",
        "error_event",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "announced_finish",
        "response_id",
        "response_model",
        "outcome",
        "reason",
        "error",
        "content",
        "content_limit",
        "done_seen",
        "finish_reason_missing",
        "error_after_end",
        "headers_at",
        "idle_before_end",
        "http",
        "finish_outcomes",
        "is_error_event",
    )

    def __init__(
        self,
        started_at: float,
        stall_threshold: float,
        bucket_bounds: Sequence[float] = t.SECONDS_BUCKETS,
        reader: ChunkReader = _ignore_chunk,
        stall_event_limit: int = 10,
        content_limit: int = 0,
        finish_outcomes: Optional[Mapping[str, str]] = None,
        is_error_event: Callable[[BaseException], bool] = never,
        is_notice: Optional[NoticeTest] = None,
    ) -> None:
        self.started_at = started_at
        # The provider's rules: finish reason -> outcome, and which SDK exception is an in-stream error event.
        self.finish_outcomes = DEFAULT_FINISH_OUTCOMES if finish_outcomes is None else finish_outcomes
        self.is_error_event = is_error_event
        self.stall_threshold = stall_threshold
        self.bucket_bounds = bucket_bounds
        self.reader = reader
        # Service notifications before the first generated chunk are read and
        # counted, but not timed: time to first chunk and the gaps start at the
        # first generated packet (Anthropic's first content_block_delta,
        # Responses' first response.*.delta). None: every chunk is generated.
        self.is_notice = is_notice
        self.notices = 0
        self.notice_at: Optional[float] = None  # when the last leading notification arrived
        self.first_at: Optional[float] = None
        self.last_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.max_gap = 0.0
        self.stalls = 0
        self.stall_events: List[Tuple[float, float, int]] = []
        self.stall_event_limit = stall_event_limit
        # Gaps are aggregated in-stream: a count per histogram bucket and the
        # exact min and max (their sum is last_at - first_at), so the metric
        # SDK is called once per stream rather than once per chunk. The chunk
        # count is the gap count + 1. O(buckets), independent of the chunk count.
        self.gap_counts: List[int] = [0] * (len(bucket_bounds) + 1)
        # The first boundaries (up to four), for a compare chain on the hot path
        # (real token gaps fall in these buckets): only those at or below the
        # stall threshold, so a gap the chain places is no stall and needs no
        # check; -inf for the rest (never true), the bisect starts past the chain.
        self.chain_length, self.bound_0, self.bound_1, self.bound_2, self.bound_3 = _chain(bucket_bounds, stall_threshold)
        self.gap_min = _INF
        self.gap_max = 0.0
        self.finish_reasons: List[str] = []
        self.finished_choices: Set[int] = set()  # at most n (choices) entries
        self.max_choice = -1
        self.error_event = False
        # input_tokens is the total input, cached or not (semconv); the two
        # cache counts are parts of it, where the API reports them.
        self.input_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None
        # Parts of the above a provider reports apart (gen_ai.usage.reasoning.output_tokens,
        # gen_ai.usage.cache_read/cache_creation.input_tokens); None where it does not.
        self.reasoning_tokens: Optional[int] = None
        self.cache_read_tokens: Optional[int] = None
        self.cache_creation_tokens: Optional[int] = None
        # A finish reason sent ahead of the stream's terminator (Anthropic's
        # message_delta before message_stop): it counts once the terminator comes.
        self.announced_finish: Optional[str] = None
        self.response_id: Optional[str] = None
        self.response_model: Optional[str] = None
        self.outcome: Optional[str] = None
        self.reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.content: Optional[List[str]] = [] if content_limit > 0 else None
        self.content_limit = content_limit
        # Wire facts, set once when the stream ends (see wire.py): None = not observed.
        self.done_seen: Optional[bool] = None
        self.finish_reason_missing = False
        self.error_after_end: Optional[str] = None
        # Root-cause facts, set once per stream (never per chunk): when the
        # response headers arrived, the silence before the end, and what the
        # HTTP response said (see http_facts.HttpFacts).
        self.headers_at: Optional[float] = None
        self.idle_before_end: Optional[float] = None
        self.http: Any = None

    # --- the hot path -------------------------------------------------------
    def chunk(self, now: float, chunk: Any) -> None:
        """One chunk arrived at ``now`` (seconds, monotonic)."""
        # Runs once per chunk of every stream (see bench/overhead.py for what
        # each line costs): slot reads/writes and float compares, which the
        # interpreter specialises. The bucket is found by a compare chain over
        # the first four boundaries (10-80 ms with ours: where token gaps are),
        # several times cheaper than a call to the C bisect, which is left to
        # the longer gaps. Same bucket as ``bisect_left``: a gap equal to a
        # boundary counts in the bucket that boundary closes. The chain's
        # boundaries are at most the stall threshold, so only a gap past them
        # can be a stall (about 100 instructions a chunk less).
        last = self.last_at
        if last is None:
            is_notice = self.is_notice
            if is_notice is not None and is_notice(chunk):
                self.notices += 1
                self.notice_at = now
                self.reader(self, chunk)
                return
            self.first_at = now
        else:
            gap = now - last
            if gap <= self.bound_0:
                self.gap_counts[0] += 1
            elif gap <= self.bound_1:
                self.gap_counts[1] += 1
            elif gap <= self.bound_2:
                self.gap_counts[2] += 1
            elif gap <= self.bound_3:
                self.gap_counts[3] += 1
            else:
                self.gap_counts[bisect_left(self.bucket_bounds, gap, self.chain_length)] += 1
                if gap > self.stall_threshold:
                    self._stall(now, gap)
            if gap > self.gap_max:
                self.gap_max = gap
            if gap < self.gap_min:
                self.gap_min = gap
        self.last_at = now
        self.reader(self, chunk)

    def _stall(self, now: float, gap: float) -> None:
        self.stalls += 1
        if len(self.stall_events) < self.stall_event_limit:
            self.stall_events.append((now, gap, self.chunks))

    @property
    def chunks(self) -> int:
        """Chunks received so far, leading service notifications included."""
        timed = 0 if self.first_at is None else 1 + sum(self.gap_counts)
        return self.notices + timed

    @property
    def gaps(self) -> int:
        """Gaps measured so far: between the generated chunks and those after them."""
        return sum(self.gap_counts)

    @property
    def gap_total(self) -> float:
        """The sum of all gaps (exactly last - first: the gaps telescope)."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at

    # --- facts the chunk readers report ----------------------------------------
    def finish(self, choice_index: int, finish_reason: str) -> None:
        """A choice (or the whole response) reached a terminal finish reason."""
        finished = self.finished_choices
        if choice_index in finished:
            return  # a repeated finish (a misbehaving server) must not finish another choice
        finished.add(choice_index)
        self.finish_reasons.append(finish_reason)
        if choice_index > self.max_choice:
            self.max_choice = choice_index

    def saw_choice(self, choice_index: int) -> None:
        if choice_index > self.max_choice:
            self.max_choice = choice_index

    def add_content(self, text: str) -> None:
        """Keep opted-in completion text, capped at ``content_limit`` characters."""
        content = self.content
        if content is None or not text:
            return
        used = sum(len(piece) for piece in content)
        if used < self.content_limit:
            content.append(text[: self.content_limit - used])

    @property
    def terminal(self) -> bool:
        """Did every choice we saw reach a finish reason?"""
        finished = len(self.finished_choices)
        return finished > 0 and finished > self.max_choice

    @property
    def time_to_first_chunk(self) -> Optional[float]:
        return None if self.first_at is None else self.first_at - self.started_at

    @property
    def duration(self) -> Optional[float]:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def gap_replay(self) -> List[Tuple[float, int]]:
        """(value, count) pairs that reproduce the gap histogram exactly.

        For recording through the public metrics API, one ``record()`` per
        gap. The min and max are replayed as themselves; every other gap is
        replayed inside its own bucket (and within [min, max]) at the same
        relative position, chosen so that the values add up to the total.
        So count, sum, min, max and every bucket count are exact.
        """
        counts = list(self.gap_counts)
        n = sum(counts)
        if n == 0:
            return []
        low, high = self.gap_min, self.gap_max
        if n == 1:
            return [(low, 1)]
        bounds = self.bucket_bounds
        last = len(bounds)
        replay: List[Tuple[float, int]] = [(low, 1), (high, 1)]
        counts[bisect_left(bounds, low)] -= 1
        counts[bisect_left(bounds, high)] -= 1
        rest_total = self.gap_total - low - high
        ranges = []
        floor = span = 0.0
        for index, count in enumerate(counts):
            if count:
                lo = low if index == 0 else max(bounds[index - 1], low)
                hi = high if index == last else min(bounds[index], high)
                ranges.append((index, count, lo, hi))
                floor += count * lo
                span += count * (hi - lo)
        alpha = min(1.0, max(0.0, (rest_total - floor) / span)) if span > 0 else 0.0
        for index, count, lo, hi in ranges:
            value = lo + alpha * (hi - lo)
            # Keep it in its bucket, (bounds[index - 1], bounds[index]], despite rounding.
            if index > 0 and value <= bounds[index - 1]:
                value = nextafter(bounds[index - 1], _INF)
            if index < last and value > bounds[index]:
                value = bounds[index]
            replay.append((value, count))
        return replay

    @property
    def time_to_headers(self) -> Optional[float]:
        return None if self.headers_at is None else self.headers_at - self.started_at

    # --- endings (the first one wins) -------------------------------------------
    def _settle(self, now: float, outcome: str, reason: Optional[str] = None) -> bool:
        if self.outcome is not None:
            return False
        self.ended_at = now
        self.outcome = outcome
        self.reason = reason
        return True

    def _trailing_silence(self, now: float) -> None:
        """The stream ended or broke at ``now``: measure the silence before it.

        From the last chunk, or from the response headers when no chunk came.
        Gaps are only measured between two chunks, so without this the
        silence that made a proxy cut the stream would be lost; above the
        stall threshold it is a stall too.
        """
        since = self.last_at if self.last_at is not None else self.notice_at
        if since is None:
            since = self.headers_at
        if since is None:
            return
        idle = max(0.0, now - since)
        self.idle_before_end = idle
        if idle > self.stall_threshold:
            self._stall(now, idle)

    def _terminal_outcome(self) -> str:
        worst = t.OUTCOME_COMPLETED
        for finish_reason in self.finish_reasons:
            outcome = outcome_for_finish_reason(finish_reason, self.finish_outcomes)
            if _OUTCOME_SEVERITY.get(outcome, 0) > _OUTCOME_SEVERITY[worst]:
                worst = outcome
        return worst

    def _settle_complete(self, now: float) -> bool:
        """Every choice finished, or the server sent ``[DONE]`` (then some finish reason was missing)."""
        if not self._settle(now, self._terminal_outcome()):
            return False
        self.finish_reason_missing = not self.terminal
        return True

    @property
    def complete(self) -> bool:
        """Did the stream reach its end: all finish reasons, or a ``[DONE]`` on the wire?"""
        return self.terminal or self.done_seen is True

    def end(self, now: float) -> bool:
        """The stream ended without an exception (StopIteration).

        Rules: finish reasons for every choice -> their outcome (with or without
        ``[DONE]``); ``[DONE]`` without them -> completed, finish reason missing;
        neither -> truncated/missing_terminator. Where the wire is not observed
        (``done_seen`` None) only the finish reasons count.
        """
        if self.outcome is None:
            self._trailing_silence(now)
        if self.error_event:
            return self._settle(now, t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT)
        if self.complete:
            return self._settle_complete(now)
        # The SDK raises nothing here: the body just stopped.
        return self._settle(now, t.OUTCOME_TRUNCATED, t.REASON_MISSING_TERMINATOR)

    def fail_stream(self, now: float, exc: BaseException) -> bool:
        """Reading the stream raised ``exc``."""
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, task cancellation, GeneratorExit: the app stopped.
            return self.abandon(now)
        if self.outcome is None:
            self._trailing_silence(now)
        if self.complete and not self.error_event:
            # Everything arrived; the connection broke afterwards: keep the outcome, note the error.
            if self._settle_complete(now):
                self.error_after_end = error_type(exc)
                return True
            return False
        if self._settle(now, t.OUTCOME_TRUNCATED, truncation_reason(exc, self.is_error_event)):
            self.error = exc
            return True
        return False

    def abandon(self, now: float) -> bool:
        """The application closed or dropped the stream before its end."""
        if self.error_event:
            return self._settle(now, t.OUTCOME_TRUNCATED, t.REASON_ERROR_EVENT)
        if self.complete:
            return self._settle_complete(now)
        return self._settle(now, t.OUTCOME_ABANDONED)

    def fail_request(self, now: float, exc: BaseException) -> bool:
        """The request itself failed: no stream was returned."""
        if not isinstance(exc, Exception):
            # Cancelled or interrupted while waiting for the response: the app
            # stopped, nothing failed (and there is no failed attempt to retry).
            return self.abandon(now)
        if self._settle(now, t.OUTCOME_FAILED):
            self.error = exc
            return True
        return False
