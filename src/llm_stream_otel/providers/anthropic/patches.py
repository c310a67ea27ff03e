"""What of the anthropic SDK is patched: ``messages.create``, the ``messages.stream()`` helper, SDK retries.

Plain and beta Messages, sync and async, on both majors; the Bedrock and
Vertex clients use these same resource classes. ``stream()`` does not go
through ``create``: it returns a ``MessageStreamManager`` holding the
request (``self._post`` with ``stream=True``), sent on ``__enter__``. We
swap that request for the same one under our method wrapper, so the helper
(``text_stream``, ``get_final_message()``, ``until_done()``, ``with`` exit)
reads our proxy of the raw stream. The manager's attribute is private
(``__api_request``): where a version lacks it, ``stream()`` is left alone
and a debug line says so.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, List, Optional, Tuple

from ...guard import internal_error
from ...stream.wrapper import method_wrapper
from ..base import Patch
from ..stainless import sdk_retry_patches

_logger = logging.getLogger(__name__)

KIND = "messages"
# (module, class, kind, is_async): each has ``create`` and ``stream``.
TARGETS: Tuple[Tuple[str, str, str, bool], ...] = (
    ("anthropic.resources.messages.messages", "Messages", KIND, False),
    ("anthropic.resources.messages.messages", "AsyncMessages", KIND, True),
    ("anthropic.resources.beta.messages.messages", "Messages", KIND, False),
    ("anthropic.resources.beta.messages.messages", "AsyncMessages", KIND, True),
)


def find(module_name: str, class_name: str) -> Optional[type]:
    """A class of the installed SDK, or None where this version lacks it."""
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        _logger.debug("llm_stream_otel: %s.%s not in this SDK version; skipped", module_name, class_name)
        return None


def _request_attribute(manager: Any) -> Optional[str]:
    """The name-mangled ``__api_request`` of a (Beta)(Async)MessageStreamManager, if it has one."""
    name = f"_{type(manager).__name__.lstrip('_')}__api_request"
    return name if name in getattr(manager, "__dict__", {}) else None


def _instrument_manager(manager: Any, create: Callable[..., Any], instance: Any, kwargs: dict, is_async: bool) -> None:
    attribute = _request_attribute(manager)
    if attribute is None:
        _logger.debug("llm_stream_otel: %s has no __api_request; messages.stream() not observed",
                      type(manager).__qualname__)
        return
    request = getattr(manager, attribute)
    call_kwargs = {**kwargs, "stream": True}  # what the helper sends
    if is_async:
        # The SDK awaits the request on __aenter__: our span starts then, not at stream().
        async def instrumented_request() -> Any:
            return await create(lambda **_: request, instance, (), call_kwargs)

        setattr(manager, attribute, instrumented_request())
    else:
        setattr(manager, attribute, lambda: create(lambda **_: request(), instance, (), call_kwargs))


def stream_helper_wrapper(create: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """Wrapper for ``Messages.stream``: the manager it returns sends its request through ``create``."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        manager = wrapped(*args, **kwargs)
        try:
            _instrument_manager(manager, create, instance, kwargs, is_async)
        except Exception:  # noqa: BLE001
            internal_error("stream helper")
        return manager

    return wrapper


def patches(telemetry: Any, provider: Any) -> List[Patch]:
    """Every wrapper of the anthropic provider, for the classes this SDK version has."""
    out: List[Patch] = []
    for module_name, class_name, _, is_async in TARGETS:
        owner = find(module_name, class_name)
        if owner is None:
            continue
        create = method_wrapper(telemetry, provider, KIND, is_async)
        out.append((owner, "create", create))
        if "stream" in vars(owner):
            out.append((owner, "stream", stream_helper_wrapper(create, is_async)))
    out.extend(sdk_retry_patches("anthropic"))
    return out
