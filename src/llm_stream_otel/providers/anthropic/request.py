"""Describe an outgoing Messages stream as low-cardinality attributes (never the messages)."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai

from ... import semconv as t
from ..base import RequestInfo, server_parts

_REQUEST_PARAMS = (
    ("max_tokens", _gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    ("temperature", _gen_ai.GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", _gen_ai.GEN_AI_REQUEST_TOP_P),
    ("top_k", getattr(_gen_ai, "GEN_AI_REQUEST_TOP_K", "gen_ai.request.top_k")),
)


def describe_request(kind: str, instance: Any, kwargs: Mapping[str, Any]) -> RequestInfo:
    model = kwargs.get("model")
    model = model if isinstance(model, str) else None
    host, port, base = server_parts(getattr(getattr(instance, "_client", None), "base_url", None))
    attributes: Dict[str, Any] = {
        t.GEN_AI_OPERATION_NAME: t.OPERATION_CHAT,
        t.GEN_AI_PROVIDER_NAME: t.PROVIDER_ANTHROPIC,
        t.GEN_AI_REQUEST_STREAM: True,
    }
    if model:
        attributes[t.GEN_AI_REQUEST_MODEL] = model
    if host:
        attributes[t.SERVER_ADDRESS] = host
    if port:
        attributes[t.SERVER_PORT] = port
    for param, key in _REQUEST_PARAMS:
        value = kwargs.get(param)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = value
    return RequestInfo(kind, t.OPERATION_CHAT, model, host, port, base, attributes)
