"""Transport errors are classified by what happened, across wrapper layers."""

from __future__ import annotations

import errno

from llm_stream_otel import semconv as t
from llm_stream_otel.providers.openai import OpenAIProvider
from llm_stream_otel.stream.outcome import error_type, exception_chain, truncation_reason


class RemoteProtocolError(Exception):
    """Same name as httpx's / httpx2's / h11's; we match by name, not import."""


class ReadError(Exception):
    pass


class APIConnectionError(Exception):
    pass


class APITimeoutError(APIConnectionError):
    pass


class APIError(Exception):
    def __init__(self, message, body):
        super().__init__(message)
        self.body = body


def chained(*layers):
    """Link layers innermost-first so each wraps the previous as __cause__."""
    for inner, outer in zip(layers, layers[1:]):
        outer.__cause__ = inner
    return layers[-1]


def test_reset_wrapped_twice():
    exc = chained(ConnectionResetError(errno.ECONNRESET, "reset"), ReadError("read"), APIConnectionError("conn"))
    assert [type(e).__name__ for e in exception_chain(exc)] == ["APIConnectionError", "ReadError", "ConnectionResetError"]
    assert truncation_reason(exc) == t.REASON_CONNECTION_RESET


def test_incomplete_chunked_read():
    exc = chained(RemoteProtocolError("incomplete chunked read"), APIConnectionError("Connection error."))
    assert truncation_reason(exc) == t.REASON_INCOMPLETE_READ


def test_timeout():
    assert truncation_reason(APITimeoutError("Request timed out.")) == t.REASON_READ_TIMEOUT
    assert truncation_reason(chained(TimeoutError(), ReadError("x"))) == t.REASON_READ_TIMEOUT


def test_error_event_is_the_providers_rule():
    openai_rule = OpenAIProvider().is_error_event
    assert truncation_reason(APIError("boom", body={"message": "boom"}), openai_rule) == t.REASON_ERROR_EVENT
    # Without the provider's rule the core sees only an exception it does not know.
    assert truncation_reason(APIError("boom", body={"message": "boom"})) == t.REASON_OTHER
    assert truncation_reason(APIError("boom", body=None), openai_rule) == t.REASON_OTHER


def test_error_event_and_other():
    assert truncation_reason(ValueError("json")) == t.REASON_OTHER


def test_oserror_errno_reset_and_cycle_safe():
    exc = OSError(errno.ECONNRESET, "reset by peer")
    assert truncation_reason(exc) == t.REASON_CONNECTION_RESET
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert truncation_reason(a) == t.REASON_OTHER


def test_error_type_is_class_name():
    assert error_type(APITimeoutError()) == "APITimeoutError"
