"""Was a stream's HTTP connection reused from the pool, and how long had it idled?

The openai SDK passes no request extensions, so httpcore's ``trace`` hook is
out of reach without patching the client. What every httpx/httpx2 response
does expose is the public ``network_stream`` response extension, whose
``get_extra_info("socket")`` names the TCP connection by its address pair.
A small bounded registry remembers, per connection, when the last
instrumented stream on it ended: a later stream on the same address pair
was served by a pooled connection that had been idle since then.

So ``reused=True`` is certain; ``False`` means no earlier *instrumented*
stream used it (a non-streaming call before it is not seen). One lookup per
stream; nothing per chunk.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Tuple

from . import telemetry as t

_MAX_CONNECTIONS = 1024
# address pair -> the monitor of the last stream on it (its ended_at, read lazily).
_last_use: "OrderedDict[Tuple[Any, Any], Any]" = OrderedDict()


def connection_key(response: Any) -> Optional[Tuple[Any, Any]]:
    """(local, remote) address of the response's TCP connection, if exposed."""
    extensions = getattr(response, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    stream = extensions.get("network_stream")
    get_extra_info = getattr(stream, "get_extra_info", None)
    if get_extra_info is None:
        return None
    sock = get_extra_info("socket")
    if sock is None:
        return None
    try:
        return sock.getsockname(), sock.getpeername()
    except OSError:  # already closed
        return None


def connection_facts(monitor: Any, response: Any) -> dict:
    """``llm.stream.connection.reused`` (and ``.idle`` in s) for this stream; records the use."""
    key = connection_key(response)
    if key is None:
        return {}
    previous = _last_use.pop(key, None)
    _last_use[key] = monitor
    while len(_last_use) > _MAX_CONNECTIONS:
        _last_use.popitem(last=False)
    if previous is None:
        return {t.CONNECTION_REUSED: False}
    facts: dict = {t.CONNECTION_REUSED: True}
    ended_at = previous.ended_at
    if ended_at is not None:
        facts[t.CONNECTION_IDLE] = max(0.0, monitor.started_at - ended_at)
    return facts
