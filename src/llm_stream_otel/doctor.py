"""``llm-stream-otel doctor``: is the instrumentation going to work here?"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from typing import Iterator, List, Set, Tuple

from .config import (
    ENV_APP_RETRIES,
    ENV_CAPTURE_CONTENT,
    ENV_MAX_ATTRIBUTE_VALUES,
    ENV_METRICS_FAST_PATH,
    ENV_SPAN_FAST_PATH,
    ENV_RETRY_WINDOW,
    ENV_STALL_THRESHOLD,
    load_settings,
)

_PACKAGES = (
    "llm-stream-otel",
    "openai",
    "google-genai",
    "aiohttp",
    "anthropic",
    "httpx",
    "httpx2",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation",
    "opentelemetry-semantic-conventions",
    "opentelemetry-instrumentation-openai-v2",
    "opentelemetry-instrumentation-httpx",
    "wrapt",
)
_ENV = {
    "stall_threshold": ENV_STALL_THRESHOLD,
    "retry_window": ENV_RETRY_WINDOW,
    "capture_content": ENV_CAPTURE_CONTENT,
    "max_attribute_values": ENV_MAX_ATTRIBUTE_VALUES,
    "metrics_fast_path": ENV_METRICS_FAST_PATH,
    "span_fast_path": ENV_SPAN_FAST_PATH,
    "app_retries": ENV_APP_RETRIES,
}


def versions() -> List[Tuple[str, str]]:
    found = []
    for name in _PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    return found


def entry_point() -> str:
    for ep in metadata.entry_points(group="opentelemetry_instrumentor"):
        if ep.name == "llm_stream":
            return f"{ep.name} = {ep.value}"
    return "NOT FOUND (is the package installed with pip, not just on PYTHONPATH?)"


def patched_methods() -> List[str]:
    """What instrument() patches in this environment (tried with no-op providers, then undone)."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    from .instrumentor import LLMStreamInstrumentor

    instrumentor = LLMStreamInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return instrumentor.patched_methods
    instrumentor.instrument(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    try:
        return instrumentor.patched_methods
    finally:
        instrumentor.uninstrument()


def providers() -> List[str]:
    """The providers whose SDK is importable here (see providers/__init__.py)."""
    from .providers import installed

    return [provider.name for provider in installed()]


def wire_report() -> str:
    """How the end of a stream is judged with the installed SDK (see wire.py)."""
    from .providers.openai.wire import strategy

    how = strategy()
    if how is None:
        return (
            "NOT observed (openai._streaming.Stream._iter_events not found): a stream without "
            "finish reasons counts as truncated/missing_terminator even when the server sent [DONE]"
        )
    return f"observed ({how}: the SDK's SSE events, hooked once per stream)"
class _Once(logging.Filter):
    """Let each distinct message through once (doctor reads the settings twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextmanager
def _each_warning_once() -> Iterator[None]:
    """Our warnings go to stderr once each while the report is built."""
    logger = logging.getLogger("llm_stream_otel")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_Once())
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def report() -> str:
    with _each_warning_once():
        return _report()


def _report() -> str:
    lines = ["versions:"]
    lines += [f"  {name:40s} {version}" for name, version in versions()]
    lines += ["", f"entry point (opentelemetry_instrumentor): {entry_point()}", "", "patched by instrument():"]
    try:
        methods = patched_methods()
        lines += [f"  {m}" for m in methods] or ["  nothing (is openai installed?)"]
    except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
        lines.append(f"  could not instrument: {type(exc).__name__}: {exc}")
    lines += ["", "providers (SDK importable here): " + (", ".join(providers()) or "none")]
    lines += ["", f"[DONE] on the wire: {wire_report()}"]
    lines += ["", "effective configuration (environment, defaults for bad values):"]
    for key, value in asdict(load_settings()).items():
        env = _ENV.get(key, "")
        lines.append(f"  {key:22s} {value!s:10s} {env}")
    return "\n".join(lines)
