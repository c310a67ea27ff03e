"""The anthropic provider (SDK 1.x and 2.x): Messages streams, plain and beta.

The second implementation of the provider contract (``providers/base.py``):
``messages.create(stream=True)`` and the ``messages.stream()`` helper, sync
and async, including the Bedrock and Vertex clients (same resource classes).
``message_stop`` is the terminator and arrives as an event, so no wire hook
is needed; an ``event: error`` is raised by the SDK as a status error with
status 200 (``is_error_event``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, List, Mapping, Optional, Tuple

from ... import semconv as t
from .. import stainless
from ..base import Patch, Provider, kind_by_owner
from .chunks import FINISH_OUTCOMES, is_error_event, notice_test_for, reader_for
from .continuation import delta_text, prefilled_request, without_prefix
from .request import describe_request


class AnthropicProvider(Provider):
    name = t.PROVIDER_ANTHROPIC
    requirement = "anthropic >= 1.0.0"
    finish_outcomes = FINISH_OUTCOMES
    wire_strategy = "events"  # message_stop is an event the SDK yields

    def __init__(self) -> None:
        # The hooks that are plain functions, bound as they are (no delegating frame).
        self.describe = describe_request  # type: ignore[method-assign]
        self.is_stream = stainless.is_stream  # type: ignore[method-assign]
        self.stream_request = stainless.stream_request  # type: ignore[method-assign]
        self.reader = reader_for  # type: ignore[method-assign]
        self.notice_test = notice_test_for  # type: ignore[method-assign]
        self.is_error_event = is_error_event  # type: ignore[method-assign]
        self.delta_text = delta_text  # type: ignore[method-assign]
        self.without_prefix = without_prefix  # type: ignore[method-assign]

    def available(self) -> bool:
        return importlib.util.find_spec("anthropic") is not None

    def patches(self, telemetry: Any) -> List[Patch]:
        from .patches import patches

        return patches(telemetry, self)

    def kind_of(self, method: Any) -> Optional[str]:
        from .patches import TARGETS, find

        return kind_by_owner(method, TARGETS, find)

    def continuation(self, kind: str, kwargs: Mapping[str, Any], partial: str, prompt: str) -> Tuple[dict, str]:
        return prefilled_request(kwargs, partial)


PROVIDER = AnthropicProvider
