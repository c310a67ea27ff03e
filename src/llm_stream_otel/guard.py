"""Keep our own bugs out of the application.

Every hook we run inside the application's call stack goes through
``internal_error``: a failure is logged once per place (with its traceback)
and swallowed, so a broken exporter or a bug in our code never changes what
the application sees, and never floods its logs either.
"""

from __future__ import annotations

import logging
import threading

_logger = logging.getLogger("llm_stream_otel")
_reported: set = set()
_lock = threading.Lock()


def internal_error(where: str) -> None:
    """Call from an ``except Exception`` block: log once per ``where``, then at debug."""
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
