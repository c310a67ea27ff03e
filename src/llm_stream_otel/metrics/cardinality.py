"""Bound the cardinality of the free-text metric attributes.

Model names and server addresses are the only free-text values we put on
metrics; a misbehaving app (one model name per tenant, say) must not be
able to explode a metrics backend, so past a cap new values become
``_OTHER``.
"""

from __future__ import annotations

import threading
from typing import Optional

from ..semconv import ERROR_TYPE_OTHER


class CardinalityLimiter:
    """Pass the first ``cap`` distinct values through, then ``_OTHER``."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set = set()
        self._lock = threading.Lock()

    def __call__(self, value: Optional[str]) -> Optional[str]:
        if value is None or value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._cap:
                return ERROR_TYPE_OTHER
            self._seen.add(value)
            return value
