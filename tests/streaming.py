"""Drive the real openai client against the fault server, sync or async alike."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any, List, Optional, Tuple

_counter = itertools.count()

ENDPOINTS = ("chat", "completions", "responses")


def unique_prompt(label: str = "") -> str:
    return f"prompt {label} #{next(_counter)}"


def request_kwargs(endpoint: str, fault: str, prompt: Optional[str] = None, **extra: Any) -> dict:
    prompt = prompt or unique_prompt(fault)
    headers = {"X-Fault": fault}
    headers.update(extra.pop("extra_headers", {}))
    common = dict(model="gpt-test", stream=True, extra_headers=headers, **extra)
    if endpoint == "chat":
        return dict(messages=[{"role": "user", "content": prompt}], **common)
    if endpoint == "completions":
        return dict(prompt=prompt, **common)
    return dict(input=prompt, **common)


def generated_chunks(endpoint: str, chunks: List[Any]) -> int:
    """The chunks that are timed (gaps = this - 1): Responses' leading notifications
    (``response.created`` ... before the first ``response.*.delta``) are not."""
    if endpoint != "responses":
        return len(chunks)
    first = next((i for i, c in enumerate(chunks) if c.type.endswith(".delta")), len(chunks))
    return len(chunks) - first


def resource(client: Any, endpoint: str) -> Any:
    if endpoint == "chat":
        return client.chat.completions
    if endpoint == "completions":
        return client.completions
    return client.responses


def consume(client: Any, endpoint: str, fault: str, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    """Create a stream and read it to the end; return the chunks and the exception raised."""
    chunks: List[Any] = []
    try:
        stream = resource(client, endpoint).create(**request_kwargs(endpoint, fault, **kw))
        for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


async def aconsume(client: Any, endpoint: str, fault: str, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    chunks: List[Any] = []
    try:
        stream = await resource(client, endpoint).create(**request_kwargs(endpoint, fault, **kw))
        async for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:  # noqa: BLE001
        return chunks, exc
    return chunks, None


def run(client: Any, endpoint: str, fault: str, **kw: Any) -> Tuple[List[Any], Optional[BaseException]]:
    """``consume`` for a sync client, ``aconsume`` (on a fresh loop) for an async one."""
    if inspect.iscoroutinefunction(resource(client, endpoint).create) or type(client).__name__.startswith("Async"):
        return asyncio.run(aconsume(client, endpoint, fault, **kw))
    return consume(client, endpoint, fault, **kw)
