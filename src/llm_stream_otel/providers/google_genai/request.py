"""Describe a ``generate_content_stream`` call as low-cardinality attributes.

Only the model, the client's base URL and a few sampling parameters of the
``config`` are read; ``contents`` is never looked at here (the retry
fingerprint hashes it in memory elsewhere and never exports it).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai

from ... import semconv as t
from ..base import RequestInfo, is_number, request_attributes

# GenerateContentConfig field -> span attribute
_CONFIG_PARAMS = (
    ("temperature", _gen_ai.GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", _gen_ai.GEN_AI_REQUEST_TOP_P),
    ("top_k", _gen_ai.GEN_AI_REQUEST_TOP_K),
    ("max_output_tokens", _gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
    ("seed", t.GEN_AI_REQUEST_SEED),
    ("candidate_count", t.GEN_AI_REQUEST_CHOICE_COUNT),
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def api_client_of(instance: Any) -> Any:
    """The ``BaseApiClient`` behind ``client.models`` / ``client.aio.models``."""
    return getattr(instance, "_api_client", None)


def provider_name(api_client: Any) -> str:
    """``gcp.vertex_ai`` for a Vertex AI client, else ``gcp.gemini`` (the Gemini Developer API)."""
    return t.PROVIDER_GCP_VERTEX_AI if getattr(api_client, "vertexai", False) else t.PROVIDER_GCP_GEMINI


def server_of(api_client: Any) -> Tuple[Optional[str], Optional[int], str]:
    """Host, port and credential-free base URL of the client's ``http_options.base_url``."""
    base_url = getattr(getattr(api_client, "_http_options", None), "base_url", None)
    if not isinstance(base_url, str) or not base_url:
        return None, None, ""
    parts = urlsplit(base_url)
    host = parts.hostname
    if not host:
        return None, None, ""
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    return host, port, f"{parts.scheme}://{host}:{port}{parts.path}"


def model_name(model: Any) -> Optional[str]:
    """``gemini-2.5-flash`` from any accepted form (``models/...``, ``publishers/google/models/...``,
    a full Vertex resource name): the part after the last ``models/``, so no project id reaches a metric."""
    if not isinstance(model, str) or not model:
        return None
    return model.rsplit("models/", 1)[-1] or None


def _config_value(config: Any, name: str) -> Any:
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def describe_request(kind: str, instance: Any, kwargs: Mapping[str, Any]) -> RequestInfo:
    api_client = api_client_of(instance)
    model = model_name(kwargs.get("model"))
    host, port, base = server_of(api_client)
    attributes = request_attributes(t.OPERATION_GENERATE_CONTENT, provider_name(api_client), model, host, port)
    config = kwargs.get("config")
    if config is not None:
        for param, key in _CONFIG_PARAMS:
            value = _config_value(config, param)
            if is_number(value):
                attributes[key] = value
    return RequestInfo(kind, t.OPERATION_GENERATE_CONTENT, model, host, port, base, attributes)
