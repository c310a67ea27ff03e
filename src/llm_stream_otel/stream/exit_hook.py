"""End the streams still open when the interpreter exits, before the providers shut down.

A stream left open at exit (a module-level stream when the script ends,
``sys.exit()`` or an unhandled exception in the loop, a stream held by a
long-lived object, one kept alive by a reference cycle) would otherwise end
after the span processor shut down, or never: its span and metrics are lost.
Live calls are tracked in a ``WeakSet`` (it keeps nothing alive, and its
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
from typing import Any

from .handoff import drain

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_registered_at_stream = False


def track(call: Any) -> None:
    _live.add(call)


def untrack(call: Any) -> None:
    _live.discard(call)


def end_live_streams() -> None:
    """Run the handed-off endings, then end every live call (``end_at_exit``)."""
    try:
        drain()
    except BaseException:  # noqa: BLE001 - strict mode: nothing to raise to at exit; end the rest
        pass
    for call in list(_live):
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
