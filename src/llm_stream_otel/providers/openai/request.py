"""Describe an outgoing streaming request as low-cardinality attributes.

Only the model, the server and a few sampling parameters are read; the
messages are never looked at here (the retry fingerprint hashes them in
memory elsewhere, and never exports them).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai

from ... import semconv as t
from ..base import RequestInfo, is_number, request_attributes, server_parts

# kind of instrumented method -> gen_ai.operation.name
OPERATIONS = {
    "chat": t.OPERATION_CHAT,
    "responses": t.OPERATION_CHAT,
    "completions": t.OPERATION_TEXT_COMPLETION,
}

_REQUEST_PARAMS = (
    ("temperature", _gen_ai.GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", _gen_ai.GEN_AI_REQUEST_TOP_P),
    ("max_tokens", _gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    ("max_completion_tokens", _gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    ("max_output_tokens", _gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    ("seed", t.GEN_AI_REQUEST_SEED),
    ("n", t.GEN_AI_REQUEST_CHOICE_COUNT),
)


_PARAM_NAMES = frozenset(param for param, _key in _REQUEST_PARAMS)


def server_of(instance: Any) -> Tuple[Optional[str], Optional[int], str]:
    """Host, port and credential-free base URL of the client behind a resource."""
    return server_parts(getattr(getattr(instance, "_client", None), "base_url", None))


def describe_request(kind: str, instance: Any, kwargs: Mapping[str, Any]) -> RequestInfo:
    operation = OPERATIONS[kind]
    model = kwargs.get("model")
    model = model if isinstance(model, str) else None
    host, port, base = server_of(instance)
    attributes = request_attributes(operation, t.PROVIDER_OPENAI, model, host, port)
    if not _PARAM_NAMES.isdisjoint(kwargs):  # most requests set none of them
        for param, key in _REQUEST_PARAMS:
            value = kwargs.get(param)
            if is_number(value):
                attributes[key] = value
    return RequestInfo(kind, operation, model, host, port, base, attributes)
