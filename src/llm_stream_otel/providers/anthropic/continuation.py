"""Continue a cut Messages stream by prefilling the assistant's partial text (the resilient helper's continue mode).

The API continues an assistant turn that ends the ``messages``: no "please
continue" user turn is needed. It refuses a prefill that ends in whitespace
(HTTP 400), so the trailing whitespace is cut off the prefill; the model then
starts its continuation with it again (``" dolor"`` after ``"Lorem ipsum"``),
and that repeated prefix is trimmed off the first text delta, so the app
receives every character once.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple


def prefilled_request(kwargs: Mapping[str, Any], partial: str) -> Tuple[dict, str]:
    """The request that continues ``partial``, and the text the continuation will repeat first."""
    prefill = partial.rstrip()
    messages = list(kwargs["messages"]) + [{"role": "assistant", "content": prefill}]
    return {**kwargs, "messages": messages}, partial[len(prefill):]


def delta_text(kind: str, event: Any) -> Optional[str]:
    """The text of a ``text_delta`` event, else None."""
    if getattr(event, "type", None) != "content_block_delta":
        return None
    text = getattr(event.delta, "text", None)
    return text if isinstance(text, str) else None


def without_prefix(kind: str, event: Any, prefix: str) -> Any:
    """A copy of a text delta event with ``prefix`` cut off its text (the event itself if it does not start so)."""
    text = delta_text(kind, event)
    if not prefix or text is None or not text.startswith(prefix):
        return event
    delta = event.delta
    copy = getattr(delta, "model_copy", None) or delta.copy  # pydantic 2, else 1
    new_delta = copy(update={"text": text[len(prefix):]})
    return (getattr(event, "model_copy", None) or event.copy)(update={"delta": new_delta})
