"""A digest that recognises a repeat of the same request.

Built from the client's base URL, the method, the model, the prompt
(messages / input / prompt) and the sampling parameters. It lives only in
memory, in the retry table, and is never exported: it would be a
high-cardinality attribute and could let someone correlate prompts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Optional

# Keys that define "the same request". Transport options (timeout,
# extra_headers) and per-attempt values are left out on purpose.
_IDENTITY_KEYS = (
    "model",
    "messages",
    "input",
    "prompt",
    "instructions",
    "temperature",
    "top_p",
    "n",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "previous_response_id",
)


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def request_fingerprint(kind: str, base_url: str, kwargs: Mapping[str, Any]) -> Optional[bytes]:
    """16-byte digest of the request's identity, or None if it can't be built."""
    identity = {key: kwargs[key] for key in _IDENTITY_KEYS if key in kwargs}
    try:
        payload = json.dumps([kind, base_url, identity], sort_keys=True, default=_default, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=16).digest()
