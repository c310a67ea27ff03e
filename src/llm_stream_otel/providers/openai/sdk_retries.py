"""Count the openai client's own retries (the ``sdk`` retry layer).

The SDK re-sends a failed request (connection error, 408/409/429/5xx)
before any chunk arrives, stamping each request with an
``x-stainless-retry-count`` header. Every supported major builds each
attempt's request in ``BaseClient._build_request``; we observe the header on
the request it returns and charge the retry to the streaming call whose
``create`` is running (a context variable). The method is private, so the
patch is guarded: if it is missing, SDK retries are simply not counted.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List

from ...guard import internal_error
from ...stream.call import current_call
from ..base import Patch

_logger = logging.getLogger(__name__)


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


def sdk_retry_patches() -> List[Patch]:
    """The wrapper of ``BaseClient._build_request``, or none where it is missing."""
    try:
        from openai._base_client import BaseClient
    except ImportError:
        _logger.debug("llm_stream_otel: openai._base_client.BaseClient missing; SDK retries not counted")
        return []
    if not hasattr(BaseClient, "_build_request"):
        _logger.debug("llm_stream_otel: BaseClient._build_request missing; SDK retries not counted")
        return []
    return [(BaseClient, "_build_request", _observer())]
