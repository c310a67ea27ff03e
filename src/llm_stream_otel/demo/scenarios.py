"""The demo's traffic: realistic ways an app streams, and how streams break.

Each scenario is one *logical call* an application makes: a plain stream, a
stream cut in a particular way, the seed knowledge-base's retry loop, or the
resilient helper. Faults are asked of the embedded server per request with
the ``X-Fault`` header.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import openai

from ..resilient import RetryPolicy, aresilient_stream, resilient_stream
from . import gemini_scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    weight: float
    endpoint: str  # chat | responses | completions | messages (anthropic) | gemini
    fault: str
    style: str  # plain | app_retry | resilient_restart | resilient_continue
    is_async: bool = False
    max_retries: int = 0
    timeout: Optional[float] = None  # the client's timeout (s); None: the SDK's default


SCENARIOS: Tuple[Scenario, ...] = (
    Scenario("chat, healthy", 14, "chat", "none", "plain"),
    Scenario("chat, healthy (async)", 10, "chat", "none", "plain", is_async=True),
    Scenario("responses, healthy", 6, "responses", "none", "plain"),
    Scenario("responses, healthy (async)", 4, "responses", "none", "plain", is_async=True),
    Scenario("legacy completions, healthy", 2, "completions", "none", "plain"),
    Scenario("chat, usage chunk", 4, "chat", "none;usage=1", "plain"),
    Scenario("chat, token limit", 3, "chat", "length", "plain"),
    Scenario("chat, content filter", 1, "chat", "content_filter", "plain"),
    Scenario("chat, slow first chunk", 3, "chat", "none;first_delay=0.8", "plain"),
    Scenario("chat, stalled mid-stream", 4, "chat", "stall;seconds=1.2", "plain", is_async=True),
    Scenario("chat, socket reset (app gives up)", 3, "chat", "reset_mid_chunk", "plain"),
    Scenario("chat, body cut mid-chunk (async)", 3, "chat", "cut_mid_chunk", "plain", is_async=True),
    Scenario("chat, silent truncation", 5, "chat", "missing_terminator", "plain"),
    Scenario("responses, error event", 2, "responses", "error_event", "plain"),
    Scenario("chat, HTTP 500 then ok (SDK retries)", 3, "chat", "http_500;first=1", "plain", max_retries=2),
    Scenario("chat, cut once, app retry loop", 6, "chat", "reset_between;first=1", "app_retry"),
    Scenario("chat, cut twice, app retry loop", 3, "chat", "cut_mid_chunk;first=2", "app_retry"),
    Scenario("chat, always cut, app retry loop", 2, "chat", "reset_between", "app_retry"),
    Scenario("resilient helper, restart", 4, "chat", "reset_mid_chunk;first=1", "resilient_restart", is_async=True),
    Scenario("resilient helper, continue", 4, "chat", "cut_mid_chunk;first=1", "resilient_continue"),
    # Why streams are cut (issue 13): the signatures `llm-stream-otel diagnose` names.
    Scenario("chat, proxy idle timeout", 4, "chat", "idle_cut;seconds=1.5", "plain"),
    Scenario("chat, 502 from a proxy", 2, "chat", "http_502", "plain"),
    Scenario("chat, 504 from a proxy", 2, "chat", "http_504", "plain"),
    Scenario("chat, stale keep-alive connection", 2, "chat", "stale_keepalive", "stale_pool"),
    # The client's own read timeout (0.6 s) is below the model's 1.5 s silence.
    Scenario("chat, client read timeout", 3, "chat", "stall;after=2;seconds=1.5", "plain", timeout=0.6),
)
# Gemini and Vertex AI traffic (``demo --gemini``; needs google-genai): endpoint "gemini".
GEMINI_SCENARIOS: Tuple[Scenario, ...] = tuple(
    Scenario(name, weight, "gemini", fault, style, is_async, retries)
    for name, weight, fault, style, is_async, retries in gemini_scenarios.SPECS
)

#: A long answer (2.4 s of chunks), many at once: what a server restart cuts.
#: The demo opens a wave of these before each restart (see run.py), so a
#: restart cuts far more streams at once than the steady background of cuts.
LONG_ANSWER = Scenario("chat, long answer cut by a restart, app retry loop", 0, "chat", "none;chunks=80;delay=0.03",
                       "app_retry")

# The same server speaks Anthropic's /v1/messages: its own failure modes (an
# `event: error` after the 200, HTTP 529), when the anthropic SDK is installed.
ANTHROPIC_SCENARIOS: Tuple[Scenario, ...] = (
    Scenario("anthropic, healthy", 8, "messages", "none", "plain"),
    Scenario("anthropic, healthy (async)", 4, "messages", "none", "plain", is_async=True),
    Scenario("anthropic, token limit", 1, "messages", "length", "plain"),
    Scenario("anthropic, slow first token", 2, "messages", "none;first_delay=0.8", "plain"),
    Scenario("anthropic, overloaded_error event", 3, "messages", "error_event", "plain"),
    Scenario("anthropic, 529 then ok (SDK retries)", 2, "messages", "overloaded;first=1", "plain", max_retries=2),
    Scenario("anthropic, socket reset (async)", 2, "messages", "reset_mid_chunk", "plain", is_async=True),
    Scenario("anthropic, silent truncation", 2, "messages", "missing_terminator", "plain"),
    Scenario("anthropic, overloaded once, app retry loop", 3, "messages", "error_event;first=1", "app_retry"),
    Scenario("anthropic, resilient helper, continue", 2, "messages", "cut_mid_chunk;first=1", "resilient_continue"),
)


def available_scenarios() -> Tuple[Scenario, ...]:
    """Every scenario whose SDK is installed (openai always; anthropic when importable)."""
    if importlib.util.find_spec("anthropic") is None:
        return SCENARIOS
    return SCENARIOS + ANTHROPIC_SCENARIOS


_FAST_POLICY = dict(initial_backoff=0.05, max_backoff=0.4, max_attempts=4)


def _kwargs(scenario: Scenario, prompt: str) -> dict:
    if scenario.endpoint == "messages":
        return dict(model="claude-demo", max_tokens=256, messages=[{"role": "user", "content": prompt}],
                    extra_headers={"X-Fault": scenario.fault})
    common = dict(model="gpt-demo-mini" if "responses" not in scenario.name else "gpt-demo", extra_headers={"X-Fault": scenario.fault})
    if scenario.endpoint == "chat":
        common["messages"] = [{"role": "user", "content": prompt}]
        if "usage" in scenario.fault:
            common["stream_options"] = {"include_usage": True}
    elif scenario.endpoint == "responses":
        common["input"] = prompt
    else:
        common["prompt"] = prompt
    return common


def _create(client: Any, endpoint: str) -> Callable[..., Any]:
    if endpoint == "messages":
        return client.messages.create
    return {"chat": client.chat.completions, "responses": client.responses, "completions": client.completions}[
        endpoint
    ].create


def _client_options(scenario: Scenario) -> dict:
    options: dict = dict(api_key="sk-demo-not-a-real-key", max_retries=scenario.max_retries)
    if scenario.timeout is not None:
        options["timeout"] = scenario.timeout
    return options


def _client(scenario: Scenario, base_url: str, is_async: bool) -> Any:
    """The SDK client of the scenario's API (anthropic's base URL is the server root, without /v1)."""
    if scenario.endpoint == "messages":
        import anthropic

        cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        origin = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        return cls(base_url=origin, **{**_client_options(scenario), "api_key": "sk-ant-demo-not-a-real-key"})
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(base_url=base_url, **_client_options(scenario))


def run_sync(scenario: Scenario, base_url: str, prompt: str) -> str:
    """Run one logical call; return what the app experienced, in a few words."""
    with _client(scenario, base_url, False) as client:
        create = _create(client, scenario.endpoint)
        kwargs = _kwargs(scenario, prompt)
        if scenario.style.startswith("resilient"):
            policy = RetryPolicy(mode=scenario.style.split("_")[1], **_FAST_POLICY)
            try:
                for _ in resilient_stream(create, policy=policy, **kwargs):
                    pass
                return "ok"
            except Exception as exc:  # noqa: BLE001 - the demo reports, never crashes
                return f"gave up: {type(exc).__name__}"
        if scenario.style == "stale_pool":
            # A non-streaming call leaves its connection pooled; the server then drops it.
            client.chat.completions.create(model="gpt-demo-mini", messages=[{"role": "user", "content": "warm"}])
        attempts = 3 if scenario.style == "app_retry" else 1
        outcome = ""
        for attempt in range(attempts):
            try:
                for _ in create(stream=True, **kwargs):
                    pass
                return "ok"
            except Exception as exc:  # noqa: BLE001
                outcome = f"error: {type(exc).__name__}"
                time.sleep(0.05 * 2**attempt)
        return outcome


async def run_async(scenario: Scenario, base_url: str, prompt: str) -> str:
    client = _client(scenario, base_url, True)
    try:
        create = _create(client, scenario.endpoint)
        kwargs = _kwargs(scenario, prompt)
        try:
            if scenario.style.startswith("resilient"):
                policy = RetryPolicy(mode=scenario.style.split("_")[1], **_FAST_POLICY)
                async for _ in aresilient_stream(create, policy=policy, **kwargs):
                    pass
            else:
                async for _ in await create(stream=True, **kwargs):
                    pass
            return "ok"
        except Exception as exc:  # noqa: BLE001
            return f"error: {type(exc).__name__}"
    finally:
        await client.close()


def run_scenario(scenario: Scenario, base_url: str, prompt: str) -> str:
    if scenario.endpoint == "gemini":
        return gemini_scenarios.run_gemini(
            scenario.fault, scenario.style, scenario.is_async, scenario.max_retries, base_url, prompt
        )
    if scenario.is_async:
        return asyncio.run(run_async(scenario, base_url, prompt))
    return run_sync(scenario, base_url, prompt)


def pick(rng: Any, scenarios: Optional[List[Scenario]] = None) -> Scenario:
    pool = list(scenarios or available_scenarios())
    return rng.choices(pool, weights=[s.weight for s in pool], k=1)[0]
