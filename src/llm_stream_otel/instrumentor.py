"""``LLMStreamInstrumentor``: patch the streaming methods of every installed provider's SDK.

Loaded by ``opentelemetry-instrument`` through the ``opentelemetry_instrumentor``
entry point (``llm_stream``), or used directly::

    LLMStreamInstrumentor().instrument(stall_threshold=3.0)
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Dict, List, Tuple

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from . import guard
from . import semconv as t
from .config import load_settings
from .metrics.instruments import Instruments
from .providers import installed
from .providers.base import Provider
from .stream import exit_hook, handoff, span_fast_path
from .stream.telemetry import StreamTelemetry, set_active
from .version import __version__

_logger = logging.getLogger(__name__)

_SETTING_KEYS = (
    "stall_threshold",
    "retry_window",
    "capture_content",
    "max_attribute_values",
    "metrics_fast_path",
    "span_fast_path",
    "strict",
    "app_retries",
    "include_usage",
)


def _tracer(provider: Any) -> trace.Tracer:
    """Our tracer; a broken tracer provider costs the spans, never the app's start-up."""
    try:
        return trace.get_tracer(t.SCOPE_NAME, __version__, provider)
    except Exception:  # noqa: BLE001
        _logger.warning(
            "llm_stream_otel: the tracer provider failed to give a tracer; streams will have no spans "
            "(metrics still work)",
            exc_info=True,
        )
        return trace.NoOpTracer()


def _instruments(provider: Any, fast_path: bool) -> Instruments:
    """Our instruments; a broken meter provider costs the metrics, never the app's start-up."""
    try:
        return Instruments(metrics.get_meter(t.SCOPE_NAME, __version__, provider), fast_path)
    except Exception:  # noqa: BLE001
        _logger.warning(
            "llm_stream_otel: the meter provider failed to give a meter or its instruments; streams will "
            "have no metrics (spans still work)",
            exc_info=True,
        )
        return Instruments(metrics.NoOpMeter(t.SCOPE_NAME))


# What every wrapt wrapper derives from (wrapt 2 renamed it; 1.x has only ObjectProxy).
_PROXY_BASE = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def _is_ours(node: Any, ours: Any) -> bool:
    # ``unwrap`` of a wrapper on top of ours stores ``getattr(owner, name).__wrapped__``,
    # which wrapt 2 gives as a BoundFunctionWrapper whose parent is our FunctionWrapper.
    return node is ours or (isinstance(node, _PROXY_BASE) and getattr(node, "_self_parent", None) is ours)


def _remove_wrapper(owner: type, name: str, ours: Any) -> None:
    """Take our wrapper out of ``owner.name``, wherever it sits in a chain of wrappers.

    ``opentelemetry.instrumentation.utils.unwrap`` removes the OUTERMOST wrapper:
    if another instrumentation (openai-v2...) wrapped ``create`` after us, that
    would remove theirs and leave ours. So find ours and splice it out.
    """
    current = vars(owner).get(name)
    if ours is None:  # not recorded (should not happen): the old behaviour
        unwrap(owner, name)
        return
    if _is_ours(current, ours):
        setattr(owner, name, current.__wrapped__)
        return
    node = current
    for _ in range(64):  # a chain of wrappers, never a cycle; bounded all the same
        if not isinstance(node, _PROXY_BASE):
            break
        inner = node.__wrapped__
        if _is_ours(inner, ours):
            node.__wrapped__ = inner.__wrapped__
            return
        node = inner
    _logger.debug("llm_stream_otel: our wrapper of %s.%s was already removed", owner.__qualname__, name)


class LLMStreamInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Spans and metrics for every streaming call of the installed providers' SDKs."""

    def __init__(self) -> None:
        super().__init__()
        # BaseInstrumentor is a singleton: every ``LLMStreamInstrumentor()`` returns
        # the same object and runs __init__ again. Resetting here would forget
        # what is patched, and a later uninstrument() would leave it all in place.
        if "_patched" not in self.__dict__:
            self._patched: List[Tuple[type, str]] = []
            self._wrappers: Dict[Tuple[type, str], Any] = {}
            self.telemetry: "StreamTelemetry | None" = None
            self.providers: List[Provider] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        # None of them is required: each provider is installed only where its SDK is
        # importable (``opentelemetry-instrument`` skips an instrumentor whose listed
        # dependencies are missing, and one SDK alone must be enough).
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        settings = load_settings({key: kwargs.get(key) for key in _SETTING_KEYS})
        telemetry = StreamTelemetry(
            _tracer(kwargs.get("tracer_provider")),
            _instruments(kwargs.get("meter_provider"), settings.metrics_fast_path),
            settings,
        )
        self.telemetry = telemetry
        set_active(telemetry)
        guard.configure(telemetry.instruments.internal_errors, settings.strict)
        span_fast_path.configure(settings.span_fast_path)
        exit_hook.register()
        self.providers = installed()
        for provider in self.providers:
            try:
                patches = provider.patches(telemetry)
            except Exception:  # noqa: BLE001 - a broken provider costs only itself
                _logger.warning("llm_stream_otel: the %s provider failed to patch its SDK", provider.name, exc_info=True)
                continue
            for owner, name, wrapper in patches:
                wrap_function_wrapper(owner, name, wrapper)
                self._patched.append((owner, name))
        # Remember our own wrapper objects: another instrumentation may wrap the
        # same methods on top of ours, and uninstrument() must remove ours only.
        self._wrappers = {(owner, name): vars(owner).get(name) for owner, name in self._patched}

    def _uninstrument(self, **kwargs: Any) -> None:
        handoff.drain()
        while self._patched:
            owner, name = self._patched.pop()
            _remove_wrapper(owner, name, self._wrappers.get((owner, name)))
        self._wrappers = {}
        if self.telemetry is not None:
            self.telemetry.instruments.close()  # the queued endings, written now
        self.telemetry = None
        self.providers = []
        set_active(None)
        guard.configure(None, False)

    @property
    def patched_methods(self) -> List[str]:
        """Qualified names of what is patched now (for ``doctor``)."""
        return [f"{owner.__module__}.{owner.__qualname__}.{name}" for owner, name in self._patched]
