"""The ``wrapt`` wrapper put around a provider's streaming methods.

Non-streaming calls return at once (the provider's ``is_stream`` check).
Streaming calls get a ``StreamCall`` (span + monitor) and their result is
wrapped in a proxy. The sync and async paths differ only in ``await``;
everything else is in ``StreamTelemetry``, ``StreamCall`` and the provider.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..guard import internal_error
from .call import StreamCall
from .first_pull import FirstPull
from .http_facts import note_response
from .proxy import AsyncStreamProxy, SyncStreamProxy, wrap_stream
from .telemetry import StreamTelemetry

if TYPE_CHECKING:  # pragma: no cover
    from ..providers.base import Provider


def _begin(
    telemetry: StreamTelemetry, provider: "Provider", kind: str, instance: Any, kwargs: Mapping[str, Any]
) -> Optional[StreamCall]:
    try:
        return telemetry.begin(provider, kind, instance, kwargs)
    except Exception:  # noqa: BLE001
        internal_error("stream start")
        return None


def _wrap_result(result: Any, call: StreamCall, provider: "Provider", is_async: bool, prepared: bool) -> Any:
    try:
        call.wire = provider.watch(result)
    except Exception:  # noqa: BLE001 - the stream is still observed, by the finish-reason rule
        internal_error("wire hook")
    try:
        # We rewrote the request (include_usage): read through the filter that undoes it.
        source = provider.source(result, call.monitor) if prepared else None
        if source is None and provider.sends_on_first_pull:
            # The request is sent by the first next(), not by the call (google-genai).
            source = FirstPull(result, call, provider)
        inner = None if source is not None else provider.iterator(result)
        # Pick the proxy by the method called, not by duck typing: a stream
        # wrapper of another instrumentation (openai-v2's) can implement both
        # protocols, and a sync stream in an async proxy would go unobserved.
        if is_async and hasattr(result, "__anext__"):
            return AsyncStreamProxy(result, call, source, inner)
        if not is_async and hasattr(result, "__next__"):
            return SyncStreamProxy(result, call, source, inner)
        return wrap_stream(result, call, source)
    except Exception:  # noqa: BLE001
        internal_error("stream wrap")
        return result


def _headers_arrived(call: StreamCall, provider: "Provider", carrier: Any) -> None:
    """The call returned (or raised an HTTP status error): the response headers are in."""
    try:
        note_response(call.monitor, provider.response_of(carrier), time.perf_counter())
    except Exception:  # noqa: BLE001
        internal_error("response headers")


def _send(
    call: StreamCall, provider: "Provider", wrapped: Callable[..., Any], args: tuple, kwargs: dict, prepared: bool
) -> Any:
    with call.activated():
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _headers_arrived(call, provider, exc)
            call.request_failed(exc)
            raise
    _headers_arrived(call, provider, result)
    return _wrap_result(result, call, provider, False, prepared)


async def _send_async(call: StreamCall, provider: "Provider", request: Any, prepared: bool) -> Any:
    """Await the request the SDK's method returned (its body runs here, under our span)."""
    with call.activated():
        try:
            result = await request
        except BaseException as exc:
            _headers_arrived(call, provider, exc)
            call.request_failed(exc)
            raise
    _headers_arrived(call, provider, result)
    return _wrap_result(result, call, provider, True, prepared)


def _prepared(telemetry: StreamTelemetry, provider: "Provider", kind: str, kwargs: dict) -> Optional[dict]:
    """The provider's rewrite of the request (openai: ``include_usage``), or None to send it as it is."""
    try:
        return provider.prepare(telemetry.settings, kind, kwargs)
    except Exception:  # noqa: BLE001
        internal_error("include usage")
        return None


def method_wrapper(telemetry: StreamTelemetry, provider: "Provider", kind: str, is_async: bool) -> Callable[..., Any]:
    """The wrapt wrapper for one streaming method of ``provider``'s SDK (``kind``: the provider's name for it)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not provider.is_stream(kind, kwargs):
            return wrapped(*args, **kwargs)
        rewritten = _prepared(telemetry, provider, kind, kwargs)
        sent = kwargs if rewritten is None else rewritten
        if is_async:
            # Call at once: an argument error raises here, as without us, and
            # records nothing. The coroutine's body runs when it is awaited.
            request = wrapped(*args, **sent)
            call = _begin(telemetry, provider, kind, instance, kwargs)
            if call is not None:
                return _send_async(call, provider, request, rewritten is not None)
            if rewritten is None:
                return request
            request.close()  # not started: send the app's own request instead
            return wrapped(*args, **kwargs)
        call = _begin(telemetry, provider, kind, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return _send(call, provider, wrapped, args, sent, rewritten is not None)

    return wrapper
