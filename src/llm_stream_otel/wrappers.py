"""The ``wrapt`` wrappers put around the SDK's ``create`` methods.

Non-streaming calls return at once (one dict lookup). Streaming calls get a
``StreamCall`` (span + monitor) and their result is wrapped in a proxy.
The sync and async wrappers differ only in ``await``; everything else is
in ``StreamTelemetry`` and ``StreamCall``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from .call import StreamCall
from .guard import internal_error
from .pipeline import StreamTelemetry
from .proxy import wrap_stream

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


def _wrap_result(result: Any, call: StreamCall) -> Any:
    try:
        return wrap_stream(result, call)
    except Exception:  # noqa: BLE001
        internal_error("stream wrap")
        return result


def _send(call: StreamCall, wrapped: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    with call.activated():
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.request_failed(exc)
            raise
    return _wrap_result(result, call)


async def _send_async(call: StreamCall, wrapped: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    with call.activated():
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.request_failed(exc)
            raise
    return _wrap_result(result, call)


def method_wrapper(telemetry: StreamTelemetry, kind: str, is_async: bool) -> Callable[..., Any]:
    """The wrapt wrapper for one ``create`` method (``kind``: chat, responses, completions)."""
    send = _send_async if is_async else _send

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        if not _wants_stream(kwargs):
            return wrapped(*args, **kwargs)
        call = _begin(telemetry, kind, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        return send(call, wrapped, args, kwargs)

    return wrapper
