"""google-genai's HTTP layer: the response of a stream, and the hook on each attempt.

The SDK sends one HTTP attempt in ``BaseApiClient._request_once`` (sync, httpx
or httpx2) / ``_async_request_once`` (async: aiohttp when it is installed,
else httpx); it returns once the response headers are in (an HTTP error
status raises ``errors.APIError`` there) and its ``HttpResponse`` holds the
transport's response. ``HttpRetryOptions`` re-run it through tenacity with
the SAME ``HttpRequest`` object, so a second attempt on one request is one
SDK retry. The methods are private: the patch is guarded, and without it the
headers (and SDK retries) are simply not observed.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable, List

from ...guard import internal_error
from ...stream.call import StreamCall, current_call
from ...stream.http_facts import note_response
from ..base import Patch

_logger = logging.getLogger(__name__)

# StreamCall -> a weak reference to the HttpRequest it last sent (tenacity re-sends
# the same object; HttpRequest is an unhashable dataclass, so it is no key itself).
_last_request: "weakref.WeakKeyDictionary[StreamCall, Any]" = weakref.WeakKeyDictionary()


class AiohttpResponseFacts:
    """An ``aiohttp.ClientResponse`` as the root-cause facts read it (httpx's names)."""

    __slots__ = ("status_code", "http_version", "headers")

    def __init__(self, response: Any) -> None:
        self.status_code = response.status
        version = getattr(response, "version", None)
        self.http_version = f"HTTP/{version.major}.{version.minor}" if version is not None else None
        self.headers = response.headers


def transport_response(carrier: Any) -> Any:
    """The transport's response behind a returned stream piece, an ``HttpResponse`` or an ``APIError``."""
    response = getattr(carrier, "response", None) if isinstance(carrier, BaseException) else carrier
    inner = getattr(response, "response_stream", None)  # the SDK's HttpResponse wraps the transport's
    if inner is not None and not isinstance(inner, (list, str)):
        response = inner
    if response is None or getattr(response, "headers", None) is None:
        return None
    if isinstance(getattr(response, "status_code", None), int):
        return response  # httpx, httpx2, requests
    if isinstance(getattr(response, "status", None), int):
        return AiohttpResponseFacts(response)
    return None


def _attempt(call: StreamCall, args: tuple, kwargs: dict) -> None:
    """One more HTTP attempt for ``call``: past the first for the same request, an SDK retry."""
    request = args[0] if args else kwargs.get("http_request")
    last = _last_request.get(call)
    if last is not None and last() is request:
        call.sdk_retry(call.sdk_retries + 1)
        return
    try:
        _last_request[call] = weakref.ref(request)
    except TypeError:  # not weakly referenceable: its retries are not counted
        pass


def _responded(call: StreamCall, response: Any) -> None:
    note_response(call.monitor, transport_response(response), time.perf_counter())


def _observe(call: StreamCall, what: str, hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(call, *args)
    except Exception:  # noqa: BLE001
        internal_error(what)


def request_once_observer(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """``_request_once``: count the attempt, note the headers of the response it returns."""
    call = current_call.get()
    if call is None:
        return wrapped(*args, **kwargs)
    _observe(call, "sdk retry counting", _attempt, args, kwargs)
    response = wrapped(*args, **kwargs)
    _observe(call, "response headers", _responded, response)
    return response


async def _observed(call: StreamCall, wrapped: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    _observe(call, "sdk retry counting", _attempt, args, kwargs)
    response = await wrapped(*args, **kwargs)
    _observe(call, "response headers", _responded, response)
    return response


def async_request_once_observer(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """``_async_request_once``: the same, awaited."""
    call = current_call.get()
    if call is None:
        return wrapped(*args, **kwargs)
    return _observed(call, wrapped, args, kwargs)


def http_patches() -> List[Patch]:
    """The wrappers of the SDK's per-attempt methods, or none where they are missing."""
    try:
        from google.genai._api_client import BaseApiClient
    except ImportError:
        _logger.debug("llm_stream_otel: google.genai._api_client.BaseApiClient missing; headers and SDK retries not observed")
        return []
    out: List[Patch] = []
    for name, observer in (("_request_once", request_once_observer), ("_async_request_once", async_request_once_observer)):
        if name in vars(BaseApiClient):
            out.append((BaseApiClient, name, observer))
        else:
            _logger.debug("llm_stream_otel: BaseApiClient.%s missing; its headers and SDK retries not observed", name)
    return out
