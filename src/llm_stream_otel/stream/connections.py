"""Was a stream's HTTP connection reused from the pool, and how long had it idled?

The openai SDK passes no request extensions, so httpcore's ``trace`` hook is
out of reach without patching the client. What every httpx/httpx2 response
does expose is the public ``network_stream`` response extension: the
connection's network stream object, one per connection for as long as it
lives (httpcore hands every response on a connection the same one). A
registry keyed *weakly* by that object remembers the last instrumented
stream on it: a later stream on the same connection was served by a pooled
connection that had been idle since that stream ended. (Its
``get_extra_info("socket")`` names the same connection, but on the async
backends each call rebuilds anyio's attribute table: several times the rest.)

The registry holds no more than the live connections (an entry goes with its
network stream when the pool closes the connection; openai 2.x and 3.x close a stream's
connection at its end, so there it stays empty), and a new connection is
never mistaken for a reused one, even when the OS hands out the same
address pair again. ``reused=True`` is certain; ``False`` means no earlier
*instrumented* stream used it (a non-streaming call before it is not seen).
One lookup per stream; nothing per chunk.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional

from .. import semconv as t

# id(connection) -> [a weak reference to its network stream, the monitor of the last stream
# on it (its ended_at, read lazily)]. An entry goes when its network stream does (the
# weakref callback: a dict pop, no lock, safe inside the garbage collector),
# and is only ever taken for the very object it names. Cheaper per
# stream than a WeakKeyDictionary, which builds a weak reference per lookup.
_last_use: Dict[int, List[Any]] = {}


def _forget(key: int) -> Any:
    def forget(ref: Any) -> None:
        entry = _last_use.get(key)
        if entry is not None and entry[0] is ref:
            _last_use.pop(key, None)

    return forget


def connection_of(response: Any) -> Optional[Any]:
    """The network stream object of the response's connection, if exposed."""
    extensions = getattr(response, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    stream = extensions.get("network_stream")
    if getattr(stream, "get_extra_info", None) is None:
        return None  # not a network stream
    return stream


def connection_facts(monitor: Any, response: Any) -> dict:
    """``llm.stream.connection.reused`` (and ``.idle`` in s) for this stream; records the use."""
    conn = connection_of(response)
    if conn is None:
        return {}
    key = id(conn)
    entry = _last_use.get(key)
    if entry is not None and entry[0]() is conn:
        previous = entry[1]
        entry[1] = monitor
    else:
        try:
            _last_use[key] = [weakref.ref(conn, _forget(key)), monitor]
        except TypeError:  # a stream object that takes no weak reference: not tracked
            return {}
        previous = None
    if previous is None:
        return {t.CONNECTION_REUSED: False}
    facts: dict = {t.CONNECTION_REUSED: True}
    ended_at = previous.ended_at
    if ended_at is not None:
        facts[t.CONNECTION_IDLE] = max(0.0, monitor.started_at - ended_at)
    return facts
