"""The openai provider (SDK 1.x-3.x): chat completions, Responses, legacy completions.

The first implementation of the provider contract (``providers/base.py``).
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, List, Mapping, Optional, Tuple

from ... import semconv as t
from .. import stainless
from ..base import Patch, Provider, kind_by_owner
from . import wire
from .chunks import notice_test_for, reader_for
from .include_usage import HidingSource, with_usage_requested
from .request import describe_request

# finish_reason -> outcome; anything else (a compatible server's own words) is completed.
FINISH_OUTCOMES: Mapping[str, str] = {
    "stop": t.OUTCOME_COMPLETED,
    "tool_calls": t.OUTCOME_COMPLETED,
    "function_call": t.OUTCOME_COMPLETED,
    "end_turn": t.OUTCOME_COMPLETED,
    "length": t.OUTCOME_LENGTH,
    "max_tokens": t.OUTCOME_LENGTH,
    "max_output_tokens": t.OUTCOME_LENGTH,
    "content_filter": t.OUTCOME_CONTENT_FILTER,
}


class OpenAIProvider(Provider):
    name = t.PROVIDER_OPENAI
    requirement = "openai >= 1.0.0"
    finish_outcomes = FINISH_OUTCOMES
    sdk_module = "openai"

    def __init__(self) -> None:
        # How [DONE] is observed with the installed SDK (None: it is not; see wire.py).
        self.wire_strategy = wire.strategy()
        # The hooks that are plain functions, bound as they are (no delegating frame).
        self.describe = describe_request  # type: ignore[method-assign]
        self.is_stream = stainless.is_stream  # type: ignore[method-assign]
        self.stream_request = stainless.stream_request  # type: ignore[method-assign]
        self.reader = reader_for  # type: ignore[method-assign]
        self.notice_test = notice_test_for  # type: ignore[method-assign]
        self.watch = partial(wire.watch_stream, how=self.wire_strategy)  # type: ignore[method-assign]
        self.iterator = wire.inner_iterator  # type: ignore[method-assign]

    def available(self) -> bool:
        return importlib.util.find_spec("openai") is not None

    def patches(self, telemetry: Any) -> List[Patch]:
        from .patches import patches

        return patches(telemetry, self)

    @staticmethod
    def is_error_event(exc: BaseException) -> bool:
        # openai raises a bare ``APIError`` (not a connection or status error) for
        # an error object inside the event stream.
        return type(exc).__name__ == "APIError" and getattr(exc, "body", None) is not None

    def prepare(self, settings: Any, kind: str, kwargs: Mapping[str, Any]) -> Optional[dict]:
        return with_usage_requested(kind, kwargs) if settings.include_usage else None

    def source(self, result: Any, monitor: Any) -> Any:
        return HidingSource(result, monitor)

    def kind_of(self, method: Any) -> Optional[str]:
        from .patches import CREATE_TARGETS, find

        return kind_by_owner(method, CREATE_TARGETS, find)

    def delta_text(self, kind: str, chunk: Any) -> Optional[str]:
        for choice in getattr(chunk, "choices", None) or ():
            text = getattr(getattr(choice, "delta", None), "content", None)
            if choice.index == 0 and isinstance(text, str):
                return text
        return None

    def continuation(self, kind: str, kwargs: Mapping[str, Any], partial: str, prompt: str) -> Tuple[dict, str]:
        """Chat: the partial answer as the assistant's turn, then a user turn asking to continue."""
        messages = list(kwargs["messages"]) + [{"role": "assistant", "content": partial},
                                               {"role": "user", "content": prompt}]
        return {**kwargs, "messages": messages}, ""


PROVIDER = OpenAIProvider
