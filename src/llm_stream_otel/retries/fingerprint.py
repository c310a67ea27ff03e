"""A digest that recognises a repeat of the same request, at a cost bounded in its size.

Built from the client's base URL, the method, the model, the prompt
(messages / input / prompt) and the sampling parameters. It lives only in
memory, in the retry table, and is never exported: it would be a
high-cardinality attribute and could let someone correlate prompts.

It runs on the caller's thread before every streaming request, so it reads a
bounded sample of the request, never all of it: every string by its length
and its first and last ``STRING_EDGE`` characters, every list by its length
and its first and last ``LIST_EDGE`` items, at most ``NODE_BUDGET`` values in
all. The cost is O(1) in the request size (a 4 MB image message costs the
same as "hi"). The price is a documented collision risk: two requests that
differ only inside the unread middle of a long string, or only in the middle
items of a long list (same lengths, same edges), get the same digest. Such a
pair counts as a retry only when it also meets the scoping of ``retry_scope``
(same trace, or same client and thread/task) within the retry window after a
cut or failed attempt.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Any, List, Mapping, Optional, Sequence

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

STRING_EDGE = 128
LIST_EDGE = 4
DICT_KEYS = 32
NODE_BUDGET = 160
_SCALARS = (int, float, bool, type(None))


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def _walk(value: Any, out: List[str], budget: _Budget) -> None:
    if budget.left <= 0:
        out.append("~")
        return
    budget.left -= 1
    kind = type(value)
    if kind is str:
        n = len(value)
        out.append("s" + value if n <= 2 * STRING_EDGE else f"S{n}:{value[:STRING_EDGE]}\x00{value[-STRING_EDGE:]}")
    elif kind is dict or (kind is not list and isinstance(value, Mapping)):
        out.append(f"d{len(value)}")
        # Request dicts are small and their keys strings: key order must not matter.
        items = sorted(value.items()) if len(value) <= DICT_KEYS and _str_keys(value) else islice(value.items(), DICT_KEYS)
        for key, item in items:
            out.append(f"k{key}")
            _walk(item, out, budget)
    elif isinstance(value, _SCALARS):
        out.append(f"{kind.__name__[0]}{value!r}")
    elif isinstance(value, str):
        _walk(str(value), out, budget)
    elif isinstance(value, (list, tuple)):
        n = len(value)
        out.append(f"l{n}")
        for item in value if n <= 2 * LIST_EDGE else (*value[:LIST_EDGE], *value[-LIST_EDGE:]):
            _walk(item, out, budget)
    elif isinstance(value, (bytes, bytearray)):
        n = len(value)
        out.append(f"b{n}:{bytes(value[:STRING_EDGE])!r}{bytes(value[-STRING_EDGE:])!r}")
    else:
        # A pydantic model or another object: its type and its fields, never its repr (unbounded).
        out.append("o" + type(value).__qualname__)
        fields = getattr(value, "__dict__", None)
        if isinstance(fields, dict):
            _walk(fields, out, budget)


def _str_keys(value: Mapping) -> bool:
    return all(type(key) is str for key in value)


def request_fingerprint(
    kind: str, base_url: str, kwargs: Mapping[str, Any], keys: Sequence[str] = _IDENTITY_KEYS
) -> Optional[bytes]:
    """16-byte digest of the request's identity (a bounded sample of it), or None if it can't be built.

    ``keys``: the arguments that make the request what it is (openai's by default; a
    provider whose SDK names them differently passes its own)."""
    out = [kind, base_url]
    budget = _Budget(NODE_BUDGET)
    try:
        for key in keys:
            if key in kwargs:
                out.append("=" + key)
                _walk(kwargs[key], out, budget)
        payload = "\x1f".join(out)
    except Exception:  # noqa: BLE001 - an odd request object: no fingerprint, no retry attribution
        return None
    return hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=16).digest()
