"""A digest that recognises a repeat of the same request, at a cost bounded in its size.

Built from the client's base URL, the method, the model, the prompt
(messages / input / prompt) and the sampling parameters. It lives only in
memory, in the retry table, and is never exported: it would be a
high-cardinality attribute and could let someone correlate prompts.

It runs on the caller's thread, before a streaming request while a cut or
failed request waits in the retry table, else when an attempt is cut or fails
(``RetryTracker.start``), so it reads a bounded sample of the request, never all of it: every string by its length
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


def _walk(value: Any, out: List[Any], budget: int) -> int:
    """Append the sample of ``value`` to ``out`` as hashable tuples; returns the budget left."""
    if budget <= 0:
        out.append("~")
        return budget
    budget -= 1
    kind = type(value)
    if kind is str:
        n = len(value)
        out.append(("s", value) if n <= 2 * STRING_EDGE else ("S", n, value[:STRING_EDGE], value[-STRING_EDGE:]))
    elif kind is dict or (kind is not list and isinstance(value, Mapping)):
        n = len(value)
        out.append(("d", n))
        items: Any = islice(value.items(), DICT_KEYS)
        if n <= DICT_KEYS:
            try:  # request dicts are small and their keys strings: key order must not matter
                items = sorted(value.items(), key=_key)
            except TypeError:
                pass
        for key, item in items:
            out.append(("k", key if type(key) is str else repr(key)))
            if type(item) is str and len(item) <= 2 * STRING_EDGE and budget > 0:
                out.append(("s", item))  # a message's role or short content: what _walk would append
                budget -= 1
            else:
                budget = _walk(item, out, budget)
    elif kind is float:
        out.append(("f", repr(value)))  # repr: a NaN hashes by identity, its repr does not
    elif isinstance(value, _SCALARS):
        out.append((kind.__name__, value))
    elif isinstance(value, str):
        budget = _walk(str(value), out, budget + 1)
    elif isinstance(value, (list, tuple)):
        n = len(value)
        out.append(("l", n))
        for item in value if n <= 2 * LIST_EDGE else (*value[:LIST_EDGE], *value[-LIST_EDGE:]):
            budget = _walk(item, out, budget)
    elif isinstance(value, (bytes, bytearray)):
        n = len(value)
        out.append(("b", n, bytes(value[:STRING_EDGE]), bytes(value[-STRING_EDGE:])))
    else:
        # A pydantic model or another object: its type and its fields, never its repr (unbounded).
        out.append(("o", type(value).__qualname__))
        fields = getattr(value, "__dict__", None)
        if isinstance(fields, dict):
            budget = _walk(fields, out, budget)
    return budget


def _key(item: Any) -> Any:
    key = item[0]
    if type(key) is not str:
        raise TypeError("not a string key")  # sort only string-keyed dicts
    return key


def request_fingerprint(
    kind: str, base_url: str, kwargs: Mapping[str, Any], keys: Sequence[str] = _IDENTITY_KEYS
) -> Optional[bytes]:
    """8-byte key of the request's identity (a bounded sample of it), or None if it can't be built.

    ``keys``: the arguments that make the request what it is (openai's by default; a
    provider whose SDK names them differently passes its own).

    The sample is a tuple of short strings and numbers, hashed by Python's
    (per-process keyed) ``hash``: the key lives only in this process's memory,
    and a tuple hash costs a fraction of formatting and digesting a string."""
    out: List[Any] = [kind, base_url]
    budget = NODE_BUDGET
    try:
        for key in keys:
            if key in kwargs:
                out.append(key)
                budget = _walk(kwargs[key], out, budget)
        return hash(tuple(out)).to_bytes(8, "big", signed=True)
    except Exception:  # noqa: BLE001 - an odd request object: no fingerprint, no retry attribution
        return None
