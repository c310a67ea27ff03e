"""The demo's Gemini traffic: the real ``google-genai`` client against the fault server's Gemini API.

``llm-stream-otel demo --gemini`` mixes these in (``google-genai`` must be installed:
``llm-stream-otel[google-genai]``): healthy streams (Gemini Developer API and Vertex AI, sync and async), a silent
truncation (no ``finishReason``), a reset, an error object in the stream, a
blocked prompt, a 503 the SDK's ``HttpRetryOptions`` retry, and the resilient
helper. Nothing here imports ``scenarios`` (which joins these to its own).
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Tuple

from ..resilient import RetryPolicy, resilient_stream

MODEL = "gemini-demo-flash"
VERTEX_MODEL = "gemini-demo-pro"  # its own model: one provider per model/server pair
API_KEY = "demo-not-a-real-key"

# (name, weight, fault, style, is_async, sdk retries)
SPECS: Tuple[Tuple[str, float, str, str, bool, int], ...] = (
    ("gemini, healthy", 3, "none", "plain", False, 0),
    ("gemini, healthy (async)", 2, "none", "plain", True, 0),
    ("vertex ai, healthy", 1, "none", "vertex", False, 0),
    ("gemini, silent truncation (no finishReason)", 2, "missing_terminator", "plain", False, 0),
    ("gemini, socket reset (async)", 1, "reset_mid_chunk", "plain", True, 0),
    ("gemini, error object in the stream", 1, "error_event", "plain", False, 0),
    ("gemini, blocked prompt", 1, "prompt_blocked", "plain", False, 0),
    ("gemini, 503 then ok (SDK retries)", 1, "http_503;first=1", "plain", False, 2),
    ("gemini, resilient helper, restart", 1, "cut_mid_chunk;first=1", "resilient_restart", False, 0),
)


def available() -> bool:
    """Is ``google-genai`` installed here?"""
    try:
        return importlib.util.find_spec("google.genai") is not None
    except ModuleNotFoundError:  # no ``google`` namespace at all
        return False


def _root(base_url: str) -> str:
    """The server root from the OpenAI base URL (``http://host:port/v1``): the SDK adds its own version."""
    return base_url.rsplit("/v1", 1)[0] + "/"


def _client(base_url: str, fault: str, vertex: bool, retries: int) -> Any:
    from google import genai
    from google.genai import types

    retry = types.HttpRetryOptions(attempts=retries + 1, initial_delay=0.05, max_delay=0.2) if retries else None
    options = types.HttpOptions(base_url=_root(base_url), headers={"X-Fault": fault}, timeout=30_000, retry_options=retry)
    if vertex:
        from google.oauth2.credentials import Credentials

        return genai.Client(vertexai=True, project="demo-project", location="us-central1",
                            credentials=Credentials(token="demo-token"), http_options=options)
    return genai.Client(api_key=API_KEY, http_options=options)


def run_gemini(fault: str, style: str, is_async: bool, retries: int, base_url: str, prompt: str) -> str:
    """One logical call; what the app experienced, in a few words."""
    client = _client(base_url, fault, style == "vertex", retries)
    model = VERTEX_MODEL if style == "vertex" else MODEL
    try:
        if is_async:
            return asyncio.run(_run_async(client, model, prompt))
        if style == "resilient_restart":
            policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.4, max_attempts=4)
            for _ in resilient_stream(client.models.generate_content_stream, policy=policy, model=model, contents=prompt):
                pass
        else:
            for _ in client.models.generate_content_stream(model=model, contents=prompt):
                pass
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the demo reports, never crashes
        return f"error: {type(exc).__name__}"
    finally:
        client.close()


async def _run_async(client: Any, model: str, prompt: str) -> str:
    try:
        async for _ in await client.aio.models.generate_content_stream(model=model, contents=prompt):
            pass
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}"
    finally:
        await client.aio.aclose()


__all__ = ["SPECS", "available", "run_gemini"]
