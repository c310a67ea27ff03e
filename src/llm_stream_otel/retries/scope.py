"""Whose repeat is it? The evidence that makes a repeated request an application retry.

- ``trace``: the request is sent inside a trace (a traced request handler);
  a repeat of the same request in the same trace is a retry.
- ``fingerprint``: untraced (a script's retry loop): a repeat counts only from
  the same client object and the same thread or task lineage, so unrelated
  callers (another user's "hi", another client, another thread) never match.

Mode (``OTEL_INSTRUMENTATION_LLM_STREAM_APP_RETRIES``): ``auto`` uses trace
evidence when there is a trace and the scoped fingerprint otherwise; ``trace``
only trace evidence; ``off`` no application retries at all.
"""

from __future__ import annotations

import contextvars
import itertools
from typing import Any, Callable, Mapping, Optional, Tuple

from opentelemetry import trace

from .. import semconv as t

MODE_AUTO = "auto"
MODE_TRACE = "trace"
MODE_OFF = "off"
MODES = (MODE_AUTO, MODE_TRACE, MODE_OFF)

# A number per thread or task lineage: set on first use in a context. A new
# thread starts with an empty context; a task copies its parent's, so tasks
# spawned after their parent made a call share its lineage (they are its retries' kin).
_lineage: "contextvars.ContextVar[Optional[int]]" = contextvars.ContextVar("llm_stream_otel_lineage", default=None)
_numbers = itertools.count(1)


def _lineage_number() -> int:
    number = _lineage.get()
    if number is None:
        number = next(_numbers)
        _lineage.set(number)
    return number


def retry_scope(mode: str, client: Any) -> Optional[Tuple[bytes, str]]:
    """(scope key, evidence) for this request, or None: do not attribute application retries.

    ``client`` is the SDK client object the request goes through (the provider says which)."""
    if mode == MODE_OFF:
        return None
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return b"t" + context.trace_id.to_bytes(16, "big"), t.RETRY_EVIDENCE_TRACE
    if mode == MODE_TRACE:
        return None
    return (
        b"f" + id(client).to_bytes(8, "big") + _lineage_number().to_bytes(8, "big"),
        t.RETRY_EVIDENCE_FINGERPRINT,
    )


def scoped_key(
    scope_key: bytes, fingerprint: Callable[[str, str, Mapping[str, Any]], Optional[bytes]], kind: str, base_url: str, kwargs: Mapping[str, Any]
) -> Optional[bytes]:
    """The retry table's key of a request: its scope and its fingerprint (None: no fingerprint).

    Bound with ``functools.partial`` at the start of a call and called only when needed
    (``RetryTracker.start``): a request's fingerprint matters only if a cut or failed
    request waits in the table, or if this one is cut or fails."""
    digest = fingerprint(kind, base_url, kwargs)
    return None if digest is None else scope_key + digest
