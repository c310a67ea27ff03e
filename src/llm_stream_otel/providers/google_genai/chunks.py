"""Read the facts we need out of google-genai's ``GenerateContentResponse`` chunks.

Gemini sends no ``[DONE]``: the candidate's ``finish_reason`` on the last
chunk IS the terminator, so a stream that ends without one is
``truncated/missing_terminator`` by the core's rule. A blocked prompt is one
chunk with ``prompt_feedback.block_reason`` and no candidates. Every chunk
carries the running ``usage_metadata`` (the latest is the stream's usage; it
is recorded once, when the stream ends), the ``response_id`` and the
``model_version``.

Every value of the SDK's ``FinishReason`` enum is mapped on purpose in
``FINISH_REASONS`` (tests fail on a value an SDK adds, so it gets a decision
too); see the README table for why each maps where it does.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from ... import semconv as t
from ...stream.monitor import StreamMonitor

# FinishReason value -> (the name recorded in gen_ai.response.finish_reasons, outcome).
# Names follow OpenTelemetry's google-genai instrumentation: STOP -> "stop",
# MAX_TOKENS -> "length", the rest lower-cased.
_C, _L, _F = t.OUTCOME_COMPLETED, t.OUTCOME_LENGTH, t.OUTCOME_CONTENT_FILTER
FINISH_REASONS: Mapping[str, Tuple[str, str]] = {
    "STOP": ("stop", _C),  # natural end or a stop sequence; function calls end with STOP too
    "MAX_TOKENS": ("length", _L),  # max_output_tokens reached: a model truncation
    "CONTINUATION": ("continuation", _L),  # per-request token limit, more to come (seen when not auto-continued)
    # Output withheld by a filter or a policy:
    "SAFETY": ("safety", _F),
    "RECITATION": ("recitation", _F),
    "BLOCKLIST": ("blocklist", _F),
    "PROHIBITED_CONTENT": ("prohibited_content", _F),
    "SPII": ("spii", _F),
    "IMAGE_SAFETY": ("image_safety", _F),
    "IMAGE_PROHIBITED_CONTENT": ("image_prohibited_content", _F),
    "IMAGE_RECITATION": ("image_recitation", _F),
    "LANGUAGE": ("language", _F),  # the candidate was flagged for an unsupported language
    "MODEL_ARMOR": ("model_armor", _F),
    "ESCALATION": ("escalation", _F),  # filtered by an escalation rule
    "PUP_LIMITED_DISABLED": ("pup_limited_disabled", _F),  # account limited for Prohibited Use Policy violations
    # The stream arrived whole and the server ended it on purpose; the answer may be
    # unusable, but that is the model's doing, not the transport's: completed, with
    # the reason on the span.
    "OTHER": ("other", _C),
    "MALFORMED_FUNCTION_CALL": ("malformed_function_call", _C),
    "UNEXPECTED_TOOL_CALL": ("unexpected_tool_call", _C),
    "TOO_MANY_TOOL_CALLS": ("too_many_tool_calls", _C),
    "MISSING_THOUGHT_SIGNATURE": ("missing_thought_signature", _C),
    "MALFORMED_RESPONSE": ("malformed_response", _C),
    "IMAGE_OTHER": ("image_other", _C),
    "NO_IMAGE": ("no_image", _C),
}
# proto3's zero value: "not set". A stream that ends with only this ended without a finish reason.
UNSPECIFIED = "FINISH_REASON_UNSPECIFIED"
# Recorded when prompt_feedback.block_reason says the prompt itself was blocked (any block reason).
PROMPT_BLOCKED = "prompt_blocked"

# recorded name -> outcome, for the core (anything else, e.g. an enum value newer than this table: completed)
FINISH_OUTCOMES: Dict[str, str] = {name: outcome for name, outcome in FINISH_REASONS.values()}
FINISH_OUTCOMES[PROMPT_BLOCKED] = _F


def finish_reason_name(reason: Any) -> str:
    """The recorded name of a ``FinishReason`` (an enum member, or a value the SDK did not know)."""
    value = str(getattr(reason, "value", reason))
    known = FINISH_REASONS.get(value)
    return known[0] if known is not None else value.lower()[:64]


def read_usage(monitor: StreamMonitor, usage: Any) -> None:
    """The running totals of ``usage_metadata`` (the last chunk's are the stream's).

    Output tokens are the candidates' plus the thoughts' (both are generated
    and billed as output, as openai's completion tokens include reasoning);
    the thoughts and the cached prompt tokens are also kept apart.
    """
    prompt = usage.prompt_token_count
    if prompt is not None:
        monitor.input_tokens = prompt
    candidates = usage.candidates_token_count
    thoughts = usage.thoughts_token_count
    if candidates is not None or thoughts is not None:
        monitor.output_tokens = (candidates or 0) + (thoughts or 0)
    monitor.reasoning_tokens = thoughts
    monitor.cache_read_tokens = usage.cached_content_token_count


def _capture_text(monitor: StreamMonitor, candidate: Any) -> None:
    content = candidate.content
    for part in (content.parts or ()) if content is not None else ():
        if isinstance(part.text, str) and not part.thought:
            monitor.add_content(part.text)


def read_generate_content_chunk(monitor: StreamMonitor, chunk: Any) -> None:
    """One ``GenerateContentResponse``: finish reasons per candidate, a blocked prompt, usage, ids."""
    candidates = chunk.candidates
    if candidates:
        for candidate in candidates:
            index = candidate.index or 0
            reason = candidate.finish_reason
            if reason is not None and reason != UNSPECIFIED:
                monitor.finish(index, finish_reason_name(reason))
            elif index > monitor.max_choice:
                monitor.saw_choice(index)
            if monitor.content is not None:
                _capture_text(monitor, candidate)
    else:
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            monitor.finish(0, PROMPT_BLOCKED)
    usage = chunk.usage_metadata
    if usage is not None:
        read_usage(monitor, usage)
    if monitor.response_id is None:
        monitor.response_id = chunk.response_id or None
    if monitor.response_model is None:
        monitor.response_model = chunk.model_version or None
