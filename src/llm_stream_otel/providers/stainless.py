"""What Stainless-generated SDKs (openai, anthropic) share: which calls stream, and their own retries.

``create(stream=True)`` returns a stream, except through ``with_raw_response``
/ ``with_streaming_response`` (a response object, marked by a header).

The ``sdk`` retry layer:
Those SDKs re-send a failed request (connection error, 408/409/429/5xx,
anthropic's 529) before any chunk arrives, stamping each request with an
``x-stainless-retry-count`` header. Every supported major builds each
attempt's request in ``BaseClient._build_request``; we observe the header on
the request it returns and charge the retry to the streaming call whose
request is being sent (a context variable). The method is private, so the
patch is guarded: if it is missing, SDK retries are simply not counted.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Dict, List, Mapping

from ..guard import internal_error
from ..stream.call import current_call
from .base import Patch

_logger = logging.getLogger(__name__)
_RAW_HEADER = "x-stainless-raw-response"


def is_stream(kind: str, kwargs: Mapping[str, Any]) -> bool:
    """Does this ``create`` call return a stream (``stream=True``, not a raw response)?"""
    if kwargs.get("stream") is not True:
        return False
    headers = kwargs.get("extra_headers")
    return not (headers and any(str(key).lower() == _RAW_HEADER for key in headers))


def stream_request(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The arguments that make ``create`` stream."""
    return {**kwargs, "stream": True}


def _retry_count(request: Any) -> int:
    headers = getattr(request, "headers", None)
    if headers is None:
        return 0
    try:
        return int(headers.get("x-stainless-retry-count") or 0)
    except (TypeError, ValueError):
        return 0


def _observer() -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        request = wrapped(*args, **kwargs)
        call = current_call.get()
        # A first attempt (the SDK passes ``retries_taken=0``): no retry, no header to read.
        if call is not None and kwargs.get("retries_taken", -1) != 0:
            try:
                count = _retry_count(request)
                if count > 0:
                    call.sdk_retry(count)
            except Exception:  # noqa: BLE001
                internal_error("sdk retry counting")
        return request

    return wrapper


def sdk_retry_patches(package: str) -> List[Patch]:
    """The wrapper of ``<package>._base_client.BaseClient._build_request``, or none where it is missing."""
    try:
        base_client = importlib.import_module(f"{package}._base_client").BaseClient
    except (ImportError, AttributeError):
        _logger.debug("llm_stream_otel: %s._base_client.BaseClient missing; SDK retries not counted", package)
        return []
    if not hasattr(base_client, "_build_request"):
        _logger.debug("llm_stream_otel: %s BaseClient._build_request missing; SDK retries not counted", package)
        return []
    return [(base_client, "_build_request", _observer())]
