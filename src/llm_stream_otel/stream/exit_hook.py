"""End the streams still open when the interpreter exits, before the providers shut down.

A stream left open at exit (a module-level stream when the script ends,
``sys.exit()`` or an unhandled exception in the loop, a stream held by a
long-lived object, one kept alive by a reference cycle) would otherwise end
after the span processor shut down, or never: its span and metrics are lost.
Live calls are tracked by weak reference (that keeps nothing alive, and its
weakref callback takes no lock); at exit each is ended as abandoned with
``llm.stream.ended_at_exit=true``.

``atexit`` runs last-registered first, and the SDK providers register their
shutdown when they are built. We register at ``instrument()`` and again at the
first stream, so the hook runs before the shutdown of providers built before
either (``opentelemetry-instrument`` builds them before it instruments).
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Dict, List

from .handoff import drain

# id(call) -> a weak reference to it; the reference's callback drops the entry
# when the call is collected (a dict pop: no lock). Cheaper per stream than a
# WeakSet, whose discard() builds a weak reference of its own.
_live: Dict[int, "weakref.ref[Any]"] = {}
_registered_at_stream = False


def track(call: Any) -> None:
    key = id(call)
    _live[key] = weakref.ref(call, lambda ref, key=key: _live.pop(key, None) if _live.get(key) is ref else None)


def untrack(call: Any) -> None:
    _live.pop(id(call), None)


def live_calls() -> List[Any]:
    calls = []
    for ref in list(_live.values()):
        call = ref()
        if call is not None:
            calls.append(call)
    return calls


def end_live_streams() -> None:
    """Run the handed-off endings, then end every live call (``end_at_exit``)."""
    try:
        drain()
    except BaseException:  # noqa: BLE001 - strict mode: nothing to raise to at exit; end the rest
        pass
    for call in live_calls():
        try:
            call.end_at_exit()
        except BaseException:  # noqa: BLE001
            pass


def register() -> None:
    """(Re-)register the hook so that it runs before providers registered so far shut down."""
    atexit.unregister(end_live_streams)
    atexit.register(end_live_streams)


def register_at_first_stream() -> None:
    global _registered_at_stream
    if not _registered_at_stream:
        _registered_at_stream = True
        register()
