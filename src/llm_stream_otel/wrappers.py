"""The ``wrapt`` wrappers put around the SDK's ``create`` methods.

Non-streaming calls return at once (one dict lookup). Streaming calls get a
``StreamCall`` (span + monitor) and their result is wrapped in a proxy.
The sync and async wrappers differ only in ``await``; everything else is
in ``StreamTelemetry`` and ``StreamCall``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

from .call import StreamCall
from .guard import internal_error
from .http_facts import note_response
from .include_usage import HidingSource, with_usage_requested
from .pipeline import StreamTelemetry
from .proxy import AsyncStreamProxy, SyncStreamProxy, _ObservingProxy, wrap_stream
from .wire import watch_stream

_RAW_HEADER = "x-stainless-raw-response"


def _wants_stream(kwargs: Mapping[str, Any]) -> bool:
    if kwargs.get("stream") is not True:
        return False
    headers = kwargs.get("extra_headers")
    # ``with_raw_response`` / ``with_streaming_response`` return a response
    # object, not a stream: leave those alone.
    return not (headers and any(str(key).lower() == _RAW_HEADER for key in headers))


def _begin(telemetry: StreamTelemetry, kind: str, instance: Any, kwargs: Mapping[str, Any]) -> Optional[StreamCall]:
    try:
        return telemetry.begin(kind, instance, kwargs)
    except Exception:  # noqa: BLE001
        internal_error("stream start")
        return None


def _wrap_result(result: Any, call: StreamCall, is_async: bool, hide_usage: bool = False) -> Any:
    try:
        call.wire = watch_stream(result, call.telemetry.wire_strategy)
    except Exception:  # noqa: BLE001 - the stream is still observed, by the finish-reason rule
        internal_error("wire hook")
    try:
        # We asked for usage the app did not: read through the filter that undoes it.
        source = HidingSource(result, call.monitor) if hide_usage else None
        # Pick the proxy by the method called, not by duck typing: a stream
        # wrapper of another instrumentation (openai-v2's) can implement both
        # protocols, and a sync stream in an async proxy would go unobserved.
        if is_async and hasattr(result, "__anext__"):
            return AsyncStreamProxy(result, call, source)
        if not is_async and hasattr(result, "__next__"):
            return SyncStreamProxy(result, call, source)
        return wrap_stream(result, call, source)
    except Exception:  # noqa: BLE001
        internal_error("stream wrap")
        return result


def _headers_arrived(call: StreamCall, carrier: Any) -> None:
    """``create`` returned (or raised an HTTP status error): the response headers are in."""
    try:
        note_response(call.monitor, getattr(carrier, "response", None), time.perf_counter())
    except Exception:  # noqa: BLE001
        internal_error("response headers")


def _send(call: StreamCall, wrapped: Callable[..., Any], args: tuple, kwargs: dict, hide_usage: bool) -> Any:
    with call.activated():
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _headers_arrived(call, exc)
            call.request_failed(exc)
            raise
    _headers_arrived(call, result)
    return _wrap_result(result, call, False, hide_usage)


async def _send_async(call: StreamCall, request: Any, hide_usage: bool) -> Any:
    """Await the request the SDK's ``create`` returned (its body runs here, under our span)."""
    with call.activated():
        try:
            result = await request
        except BaseException as exc:
            _headers_arrived(call, exc)
            call.request_failed(exc)
            raise
    _headers_arrived(call, result)
    return _wrap_result(result, call, True, hide_usage)


def _usage_kwargs(telemetry: StreamTelemetry, kind: str, kwargs: dict) -> Optional[dict]:
    """The request with ``include_usage`` added when the setting is on and the app did not choose."""
    if not telemetry.settings.include_usage:
        return None
    try:
        return with_usage_requested(kind, kwargs)
    except Exception:  # noqa: BLE001
        internal_error("include usage")
        return None


def _abandon_raw_stream(helper: Any) -> None:
    """The SDK's stream helpers close the HTTP response, not the stream they
    wrap: tell our proxy (if it is one), or its span would stay open until
    the helper's reference cycle is garbage-collected."""
    try:
        raw = getattr(helper, "_raw_stream", None)
        if isinstance(raw, _ObservingProxy):
            raw._self_abandon()
    except Exception:  # noqa: BLE001
        internal_error("stream helper close")


async def _aclose_helper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _abandon_raw_stream(instance)


def helper_close_wrapper(is_async: bool) -> Callable[..., Any]:
    """Wrapper for the helpers' ``ChatCompletionStream.close`` / ``ResponseStream.close`` (sync or async)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if is_async:
            return _aclose_helper(wrapped, instance, args, kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _abandon_raw_stream(instance)

    return wrapper


def method_wrapper(telemetry: StreamTelemetry, kind: str, is_async: bool) -> Callable[..., Any]:
    """The wrapt wrapper for one ``create`` method (``kind``: chat, responses, completions)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not _wants_stream(kwargs):
            return wrapped(*args, **kwargs)
        usage_kwargs = _usage_kwargs(telemetry, kind, kwargs)
        sent = kwargs if usage_kwargs is None else usage_kwargs
        if is_async:
            # Call at once: an argument error raises here, as without us, and
            # records nothing. The coroutine's body runs when it is awaited.
            request = wrapped(*args, **sent)
            call = _begin(telemetry, kind, instance, kwargs)
            if call is not None:
                return _send_async(call, request, usage_kwargs is not None)
            if usage_kwargs is None:
                return request
            request.close()  # not started: send the app's own request instead
            return wrapped(*args, **kwargs)
        call = _begin(telemetry, kind, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return _send(call, wrapped, args, sent, usage_kwargs is not None)

    return wrapper
