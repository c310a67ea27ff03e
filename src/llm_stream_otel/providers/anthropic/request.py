"""Describe an outgoing Messages stream as low-cardinality attributes (never the messages)."""

from __future__ import annotations

from typing import Any, Mapping

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai

from ... import semconv as t
from ..base import RequestInfo, is_number, request_attributes, server_parts

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
    attributes = request_attributes(t.OPERATION_CHAT, t.PROVIDER_ANTHROPIC, model, host, port)
    for param, key in _REQUEST_PARAMS:
        value = kwargs.get(param)
        if is_number(value):
            attributes[key] = value
    return RequestInfo(kind, t.OPERATION_CHAT, model, host, port, base, attributes)
