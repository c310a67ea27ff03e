"""Keep our own bugs out of the application.

Every hook we run inside the application's call stack goes through
``internal_error``: a failure is logged once per place (with its traceback),
counted in ``llm.stream.internal_errors{llm.stream.error.place}`` (so it stays
visible after the first warning) and swallowed, so a broken exporter or a bug
in our code never changes what the application sees, and never floods its
logs either. In strict mode (``OTEL_INSTRUMENTATION_LLM_STREAM_STRICT``, for
test suites) it raises instead. Never called from a finalizer (see ``handoff``).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Optional

from . import semconv as t

_logger = logging.getLogger("llm_stream_otel")
_reported: set = set()
_lock = threading.Lock()
_counter: Optional[Any] = None
_strict = False


def configure(counter: Optional[Any], strict: bool) -> None:
    """Set by the instrumentor: where to count internal errors, and whether to raise them."""
    global _counter, _strict
    _counter = counter
    _strict = strict


def _count(where: str) -> None:
    counter = _counter
    if counter is not None:
        try:
            counter.add(1, {t.ERROR_PLACE: where})
        except Exception:  # noqa: BLE001 - the counter itself is broken: the log line remains
            pass


def internal_error(where: str) -> None:
    """Call from an ``except Exception`` block: count; log once per ``where``, then at debug.
    Strict mode re-raises the exception being handled."""
    with _lock:
        first = where not in _reported
        _reported.add(where)
    if first:
        _logger.warning(
            "llm_stream_otel: internal error in %s; the application is unaffected, "
            "this stream's telemetry may be incomplete (further errors here are logged at debug)",
            where,
            exc_info=True,
        )
    else:
        _logger.debug("llm_stream_otel: internal error in %s", where, exc_info=True)
    _count(where)
    if _strict:
        exc = sys.exc_info()[1]
        raise exc if exc is not None else RuntimeError(f"llm_stream_otel: internal error in {where}")
