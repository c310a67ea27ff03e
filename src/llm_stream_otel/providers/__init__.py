"""LLM SDKs plugged into the provider-neutral core, one subpackage each.

``PROVIDERS`` names them in the order they are installed; a provider whose
SDK is not importable is skipped. The contract is ``base.Provider``.
"""

from __future__ import annotations

import importlib
import logging
from typing import List

from .base import Provider

_logger = logging.getLogger(__name__)

# module (under providers/) of each provider
PROVIDERS = ("openai", "anthropic", "google_genai")


def installed() -> List[Provider]:
    """A fresh instance of every provider whose SDK is importable here."""
    found: List[Provider] = []
    for name in PROVIDERS:
        try:
            provider = importlib.import_module(f"{__name__}.{name}").PROVIDER()
        except Exception:  # noqa: BLE001 - a broken provider costs only itself
            _logger.warning("llm_stream_otel: the %s provider failed to load", name, exc_info=True)
            continue
        if provider.available():
            found.append(provider)
    return found
