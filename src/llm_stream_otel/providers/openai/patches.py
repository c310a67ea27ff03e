"""What of the openai SDK is patched: the ``create`` methods and the stream helpers' ``close``."""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, List, Optional, Tuple

from ...guard import internal_error
from ...stream.proxy import _ObservingProxy
from ...stream.wrapper import method_wrapper
from ..base import Patch

_logger = logging.getLogger(__name__)

# (module, class, method kind, is_async)
CREATE_TARGETS: Tuple[Tuple[str, str, str, bool], ...] = (
    ("openai.resources.chat.completions", "Completions", "chat", False),
    ("openai.resources.chat.completions", "AsyncCompletions", "chat", True),
    ("openai.resources.responses", "Responses", "responses", False),
    ("openai.resources.responses", "AsyncResponses", "responses", True),
    ("openai.resources.completions", "Completions", "completions", False),
    ("openai.resources.completions", "AsyncCompletions", "completions", True),
)

# The SDK's stream helpers (``.stream()``) close the HTTP response rather than
# the stream they wrap; their ``close`` must tell our proxy. (module, class, is_async)
HELPER_CLOSE_TARGETS: Tuple[Tuple[str, str, bool], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream", False),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream", True),
    ("openai.lib.streaming.responses._responses", "ResponseStream", False),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream", True),
)


def find(module_name: str, class_name: str) -> Optional[type]:
    """A class of the installed SDK, or None where this version lacks it."""
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        _logger.debug("llm_stream_otel: %s.%s not in this SDK version; skipped", module_name, class_name)
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


def patches(telemetry: Any, provider: Any) -> List[Patch]:
    """Every wrapper of the openai provider, for the classes this SDK version has."""
    out: List[Patch] = []
    for module_name, class_name, kind, is_async in CREATE_TARGETS:
        owner = find(module_name, class_name)
        if owner is not None:
            out.append((owner, "create", method_wrapper(telemetry, provider, kind, is_async)))
    for module_name, class_name, is_async in HELPER_CLOSE_TARGETS:
        owner = find(module_name, class_name)
        if owner is not None and "close" in vars(owner):
            out.append((owner, "close", helper_close_wrapper(is_async)))
    from ..stainless import sdk_retry_patches

    out.extend(sdk_retry_patches("openai"))
    return out
