"""``LLMStreamInstrumentor``: patch the openai SDK's streaming methods.

Loaded by ``opentelemetry-instrument`` through the ``opentelemetry_instrumentor``
entry point (``llm_stream``), or used directly::

    LLMStreamInstrumentor().instrument(stall_threshold=3.0)
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Collection, List, Tuple

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from . import telemetry as t
from .config import load_settings
from .instruments import Instruments
from .pipeline import StreamTelemetry, set_active
from .version import __version__
from .wrappers import method_wrapper

_logger = logging.getLogger(__name__)

_INSTRUMENTS = ("openai >= 1.0.0",)

# (module, class, method kind, is_async)
PATCH_TARGETS: Tuple[Tuple[str, str, str, bool], ...] = (
    ("openai.resources.chat.completions", "Completions", "chat", False),
    ("openai.resources.chat.completions", "AsyncCompletions", "chat", True),
    ("openai.resources.responses", "Responses", "responses", False),
    ("openai.resources.responses", "AsyncResponses", "responses", True),
    ("openai.resources.completions", "Completions", "completions", False),
    ("openai.resources.completions", "AsyncCompletions", "completions", True),
)

_SETTING_KEYS = ("stall_threshold", "retry_window", "capture_content", "max_attribute_values")


class LLMStreamInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Spans and metrics for every streaming call of the openai SDK."""

    def __init__(self) -> None:
        super().__init__()
        self._patched: List[Tuple[type, str]] = []
        self.telemetry: "StreamTelemetry | None" = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        settings = load_settings({key: kwargs.get(key) for key in _SETTING_KEYS})
        tracer = trace.get_tracer(t.SCOPE_NAME, __version__, kwargs.get("tracer_provider"))
        meter = metrics.get_meter(t.SCOPE_NAME, __version__, kwargs.get("meter_provider"))
        telemetry = StreamTelemetry(tracer, Instruments(meter), settings)
        self.telemetry = telemetry
        set_active(telemetry)
        for module_name, class_name, kind, is_async in PATCH_TARGETS:
            self._patch(telemetry, module_name, class_name, kind, is_async)
        from .sdk_retries import patch_sdk_retries

        self._patched.extend(patch_sdk_retries(telemetry))

    def _patch(self, telemetry: StreamTelemetry, module_name: str, class_name: str, kind: str, is_async: bool) -> None:
        try:
            module = importlib.import_module(module_name)
            owner = getattr(module, class_name)
        except (ImportError, AttributeError):
            _logger.debug("llm_stream_otel: %s.%s not in this openai version; skipped", module_name, class_name)
            return
        wrap_function_wrapper(owner, "create", method_wrapper(telemetry, kind, is_async))
        self._patched.append((owner, "create"))

    def _uninstrument(self, **kwargs: Any) -> None:
        while self._patched:
            owner, name = self._patched.pop()
            unwrap(owner, name)
        self.telemetry = None
        set_active(None)

    @property
    def patched_methods(self) -> List[str]:
        """Qualified names of what is patched now (for ``doctor``)."""
        return [f"{owner.__module__}.{owner.__qualname__}.{name}" for owner, name in self._patched]
