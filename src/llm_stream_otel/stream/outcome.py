"""Map exceptions and stream endings to an outcome and a truncation reason.

Provider-neutral: a provider supplies only its finish-reason table and its
rule for an in-stream error event. The openai SDK, for one, wraps transport errors differently in each major (httpx in 1.x
and 2.x, httpx2 in 3.x, wrapped again in ``APIConnectionError``), so we never
import one library's exception class: we walk the ``__cause__`` /
``__context__`` chain and look at what actually happened (an OS-level reset,
a timeout, a protocol-level cut of the body) by builtin types and class names.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Callable, Iterator, Mapping, Optional

from .. import semconv as t
from ..metrics.cardinality import CardinalityLimiter

_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
# Class names (anywhere in an exception's MRO) that mean "the read timed out".
_TIMEOUT_NAMES = frozenset({"APITimeoutError", "ReadTimeout", "TimeoutException", "ReadTimeoutError", "Timeout"})
# Class names that mean "the body ended before the HTTP framing said it would".
_INCOMPLETE_NAMES = frozenset(
    {"RemoteProtocolError", "IncompleteRead", "ChunkedEncodingError", "ProtocolError", "ClientPayloadError"}
)
_RESET_NAMES = frozenset({"ConnectionResetError", "ServerDisconnectedError"})

_ERROR_TYPE_WORD = re.compile(r"[a-z][a-z0-9_]{0,63}")


def exception_chain(exc: BaseException, limit: int = 16) -> Iterator[BaseException]:
    """Yield ``exc`` and its causes/contexts, outermost first, each once."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen and len(seen) < limit:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names(exc: BaseException) -> set:
    return {klass.__name__ for klass in type(exc).__mro__}


def _aiohttp_reset(exc: BaseException) -> bool:
    """aiohttp's ``ClientPayloadError`` for a body cut by a reset names the
    ``ConnectionResetError`` only in its message: its cause is the parser's
    ``TransferEncodingError``, the same as for a clean FIN."""
    return type(exc).__name__ == "ClientPayloadError" and "ConnectionResetError(" in str(exc)


def _is_reset(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return True
    return bool(_names(exc) & _RESET_NAMES) or _aiohttp_reset(exc)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or bool(_names(exc) & _TIMEOUT_NAMES)


def _is_incomplete(exc: BaseException) -> bool:
    return bool(_names(exc) & _INCOMPLETE_NAMES)


def never(exc: BaseException) -> bool:
    """An ``is_error_event`` for providers whose SDK raises nothing for an in-stream error event."""
    return False


def _event_error_type(exc: BaseException) -> Optional[str]:
    """The error type an in-stream error event names (Anthropic's ``overloaded_error``).

    Provider-neutral: an HTTP status error raised with the stream's own status
    (200) carries the event, and its body is the usual error envelope.
    """
    if getattr(exc, "status_code", None) != 200:
        return None
    body: Any = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) and _ERROR_TYPE_WORD.fullmatch(kind) else None


def truncation_reason(exc: BaseException, is_error_event: Callable[[BaseException], bool] = never) -> str:
    """The truncation reason for an exception raised while reading a stream.

    ``is_error_event`` is the provider's rule for an SDK exception that
    carries an error event the server sent inside the stream.
    """
    chain = list(exception_chain(exc))
    for predicate, reason in (
        (_is_reset, t.REASON_CONNECTION_RESET),
        (_is_timeout, t.REASON_READ_TIMEOUT),
        (_is_incomplete, t.REASON_INCOMPLETE_READ),
        (is_error_event, t.REASON_ERROR_EVENT),
    ):
        if any(predicate(e) for e in chain):
            return reason
    return t.REASON_OTHER


def error_type(exc: BaseException) -> str:
    """Low-cardinality ``error.type``: the exception's class name, or the type an
    in-stream error event names (Anthropic's ``overloaded_error``)."""
    event_type = _event_error_type(exc)
    if event_type is not None:
        return event_type
    name = type(exc).__qualname__
    return name if name and len(name) <= 128 else t.ERROR_TYPE_OTHER


# Class names are few in practice; a cap keeps a library that mints classes
# (or a test suite) from growing the metric's attribute sets without bound.
_CAUSE_LIMIT = CardinalityLimiter(32)


def error_cause(exc: BaseException) -> str:
    """``llm.stream.error.cause``: the class name of the innermost exception.

    Follows ``__cause__`` / ``__context__`` (httpx 0.2x raises its transport
    errors ``from None`` yet keeps the context, so a suppressed context is
    followed too) and httpcore's habit of wrapping the original as its first
    argument, so it reads the same on every SDK major
    (``ConnectionResetError``, ``RemoteProtocolError``, ``TimeoutError``)
    where ``error.type`` differs (aiohttp's reset, named only in a message,
    too). An HTTP status error is its own cause (its context is only the
    client's ``raise_for_status``).
    """
    if _aiohttp_reset(exc):
        return "ConnectionResetError"  # what httpx's chain ends in for the same cut
    seen = set()
    current = exc
    while len(seen) < 16 and getattr(current, "status_code", None) is None:
        seen.add(id(current))
        following = current.__cause__ or current.__context__
        if following is None and current.args and isinstance(current.args[0], BaseException):
            following = current.args[0]
        if following is None or id(following) in seen:
            break
        current = following
    name = type(current).__name__
    return _CAUSE_LIMIT(name if name and len(name) <= 64 else t.ERROR_TYPE_OTHER) or t.ERROR_TYPE_OTHER


def outcome_for_finish_reason(finish_reason: str, outcomes: Mapping[str, str]) -> str:
    """Outcome of a stream that ended with this finish reason, by its provider's table."""
    return outcomes.get(finish_reason, t.OUTCOME_COMPLETED)


_LOCAL_CLOSE_NAMES = frozenset({"StreamClosed", "ClosedResourceError"})


def closed_locally(exc: BaseException) -> bool:
    """Did a read fail because this process closed the connection itself (the
    app's ``stream.response.close()``), rather than the network or the server?
    A read on a socket we closed gives EBADF (or the transport's "closed" error)."""
    return any(
        type(node).__name__ in _LOCAL_CLOSE_NAMES or (isinstance(node, OSError) and node.errno == errno.EBADF)
        for node in exception_chain(exc)
    )
