"""Endings handed off by finalizers, run later outside the garbage collector.

A stream dropped unread is finalised by the proxy's ``__del__``, which the
cyclic GC may run on any thread at any allocation, including one made while
that thread holds the metrics SDK's non-reentrant locks. Ending the stream
there (span end, metric records, logging) would wait on that lock forever.
So a finalizer only claims the call and appends it here (``deque.append``
takes no lock and is atomic in CPython); the ending runs later, outside the
collector: at the next stream start or end on any thread, by a small daemon
thread that polls (an ``Event`` would take a lock in the finalizer), on
``uninstrument()`` and at interpreter exit.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Deque, Tuple

# (call, the moment it was dropped); the call has ``end_abandoned(now)``.
pending: Deque[Tuple[Any, float]] = deque()
POLL_SECONDS = 1.0
_drainer_started = False


def hand_off(call: Any, now: float) -> None:
    """From a finalizer: no lock, no telemetry, nothing that can raise."""
    pending.append((call, now))


def drain() -> None:
    """End every handed-off call (each ``popleft`` is atomic: threads never share one)."""
    while pending:
        try:
            call, now = pending.popleft()
        except IndexError:
            return
        call.end_abandoned(now)


def _poll() -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if pending:
            try:
                drain()
            except BaseException:  # noqa: BLE001 - strict mode raises; this thread must live on
                pass


def ensure_drainer() -> None:
    """Start the polling thread once per process (from a stream start, never a finalizer)."""
    global _drainer_started
    if _drainer_started:
        return
    _drainer_started = True
    threading.Thread(target=_poll, name="llm_stream_otel-handoff", daemon=True).start()


def _forget_drainer() -> None:
    global _drainer_started
    _drainer_started = False  # the child of a fork has no drainer thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_drainer)
