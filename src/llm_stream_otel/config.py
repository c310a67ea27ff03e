"""Settings from the environment (read at instrument time), overridable by kwargs.

A bad value must never crash the application at start-up: it is logged as a
warning and the default is used instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

_logger = logging.getLogger(__name__)

ENV_STALL_THRESHOLD = "OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD"
ENV_RETRY_WINDOW = "OTEL_INSTRUMENTATION_LLM_STREAM_RETRY_WINDOW"
ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
ENV_MAX_ATTRIBUTE_VALUES = "OTEL_INSTRUMENTATION_LLM_STREAM_MAX_ATTRIBUTE_VALUES"
ENV_METRICS_FAST_PATH = "OTEL_INSTRUMENTATION_LLM_STREAM_METRICS_FAST_PATH"
ENV_SPAN_FAST_PATH = "OTEL_INSTRUMENTATION_LLM_STREAM_SPAN_FAST_PATH"
ENV_STRICT = "OTEL_INSTRUMENTATION_LLM_STREAM_STRICT"
ENV_APP_RETRIES = "OTEL_INSTRUMENTATION_LLM_STREAM_APP_RETRIES"
ENV_INCLUDE_USAGE = "OTEL_INSTRUMENTATION_LLM_STREAM_INCLUDE_USAGE"

DEFAULT_STALL_THRESHOLD = 5.0
DEFAULT_RETRY_WINDOW = 300.0
DEFAULT_MAX_ATTRIBUTE_VALUES = 100
# Captured content (opt-in) is capped so that one huge completion cannot blow
# up a span exporter's payload.
CONTENT_CAPTURE_LIMIT = 4096
STALL_EVENT_LIMIT = 10
DEFAULT_APP_RETRIES = "auto"
APP_RETRIES_MODES = ("auto", "trace", "off")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Effective configuration of the instrumentor."""

    stall_threshold: float = DEFAULT_STALL_THRESHOLD
    retry_window: float = DEFAULT_RETRY_WINDOW
    capture_content: bool = False
    max_attribute_values: int = DEFAULT_MAX_ATTRIBUTE_VALUES
    # Merge each stream's gap histogram into the SDK's aggregation (self-tested,
    # guarded); off = one public Histogram.record() per gap.
    metrics_fast_path: bool = True
    # Write a stream's summary span attributes into the SDK span's dict (self-tested,
    # guarded, see stream/span_fast_path.py); off = Span.set_attributes.
    span_fast_path: bool = True
    # Our own internal errors raise instead of being logged and swallowed (for test suites).
    strict: bool = False
    # Application retry attribution: auto | trace | off (see retry_scope.py).
    app_retries: str = DEFAULT_APP_RETRIES
    # Ask chat/completions streams for their usage chunk when the app did not
    # (and hide it from the app again): see include_usage.py.
    include_usage: bool = False


def _positive_float(name: str, raw: Any, default: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        _logger.warning("llm_stream_otel: %s=%r is not a number; using %s", name, raw, default)
        return default
    if not value > 0 or value == float("inf"):
        _logger.warning("llm_stream_otel: %s=%r must be a positive number; using %s", name, raw, default)
        return default
    return value


def _positive_int(name: str, raw: Any, default: int) -> int:
    value = _positive_float(name, raw, float(default))
    if value != int(value):
        _logger.warning("llm_stream_otel: %s=%r must be a whole number; using %s", name, raw, default)
        return default
    return int(value)


def _boolean(name: str, raw: Any, default: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    _logger.warning("llm_stream_otel: %s=%r is not true/false; using %s", name, raw, default)
    return default


# opentelemetry-util-genai (openai-v2's newer path) reads the same variable as a
# mode, not a boolean. Accept its values too, so one setting serves both: content
# goes on spans for SPAN_ONLY / SPAN_AND_EVENT; we emit no log events.
_CAPTURE_MODES = {"span_only": True, "span_and_event": True, "event_only": False, "no_content": False}


def _capture_content(name: str, raw: Any, default: bool) -> bool:
    if isinstance(raw, str) and raw.strip().lower() in _CAPTURE_MODES:
        return _CAPTURE_MODES[raw.strip().lower()]
    return _boolean(name, raw, default)


def _choice(name: str, raw: Any, choices: tuple, default: str) -> str:
    text = str(raw).strip().lower()
    if text in choices:
        return text
    _logger.warning("llm_stream_otel: %s=%r is not one of %s; using %s", name, raw, "|".join(choices), default)
    return default


def load_settings(
    overrides: Optional[Mapping[str, Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Settings:
    """Build settings from the environment, then keyword overrides on top."""
    env = os.environ if environ is None else environ
    kw = dict(overrides or {})

    def pick(key: str, env_name: str) -> Any:
        if kw.get(key) is not None:
            return kw[key]
        value = env.get(env_name)
        # An empty variable (``FOO=`` in a compose file) means unset, not bad: no warning.
        return None if value is None or not value.strip() else value

    def name(key: str, env_name: str) -> str:
        """What the user set, for warnings: the keyword argument, or the variable."""
        return f"instrument() keyword {key}" if kw.get(key) is not None else env_name

    stall = pick("stall_threshold", ENV_STALL_THRESHOLD)
    window = pick("retry_window", ENV_RETRY_WINDOW)
    capture = pick("capture_content", ENV_CAPTURE_CONTENT)
    cap = pick("max_attribute_values", ENV_MAX_ATTRIBUTE_VALUES)
    fast = pick("metrics_fast_path", ENV_METRICS_FAST_PATH)
    span_fast = pick("span_fast_path", ENV_SPAN_FAST_PATH)
    strict = pick("strict", ENV_STRICT)
    app_retries = pick("app_retries", ENV_APP_RETRIES)
    include_usage = pick("include_usage", ENV_INCLUDE_USAGE)
    return Settings(
        stall_threshold=DEFAULT_STALL_THRESHOLD
        if stall is None
        else _positive_float(name("stall_threshold", ENV_STALL_THRESHOLD), stall, DEFAULT_STALL_THRESHOLD),
        retry_window=DEFAULT_RETRY_WINDOW
        if window is None
        else _positive_float(name("retry_window", ENV_RETRY_WINDOW), window, DEFAULT_RETRY_WINDOW),
        capture_content=False if capture is None else _capture_content(name("capture_content", ENV_CAPTURE_CONTENT), capture, False),
        max_attribute_values=DEFAULT_MAX_ATTRIBUTE_VALUES
        if cap is None
        else _positive_int(name("max_attribute_values", ENV_MAX_ATTRIBUTE_VALUES), cap, DEFAULT_MAX_ATTRIBUTE_VALUES),
        metrics_fast_path=True if fast is None else _boolean(name("metrics_fast_path", ENV_METRICS_FAST_PATH), fast, True),
        span_fast_path=True
        if span_fast is None
        else _boolean(name("span_fast_path", ENV_SPAN_FAST_PATH), span_fast, True),
        strict=False if strict is None else _boolean(name("strict", ENV_STRICT), strict, False),
        app_retries=DEFAULT_APP_RETRIES
        if app_retries is None
        else _choice(name("app_retries", ENV_APP_RETRIES), app_retries, APP_RETRIES_MODES, DEFAULT_APP_RETRIES),
        include_usage=False
        if include_usage is None
        else _boolean(name("include_usage", ENV_INCLUDE_USAGE), include_usage, False),
    )
