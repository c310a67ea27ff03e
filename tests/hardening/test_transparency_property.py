"""Transparency under every fault, property-based (issue 8).

Hypothesis writes random stream scripts (random chunk shapes: missing /
empty / null ``choices``, ``null`` deltas, tool-call deltas, ``n > 1``,
unknown fields, non-ASCII and huge text; random Responses events) and puts a
random fault at a random point (reset, cut mid-chunk, missing terminator,
error event, stall, HTTP error). The real fault server plays each script
twice to the real openai client, without and then with the instrumentation.

For every script:
- the app sees the same chunks (same types, equal objects) and the same
  exception (type, message, status, body, cause chain);
- exactly one span of ours ends, with the outcome / truncation reason /
  chunk count the script implies (oracle: ``hardening_scripts.expected``),
  and exactly one ``llm.stream.outcomes`` point agrees with it;
- nothing of ours logs an internal error.

Each test runs twice: as above, and with ``include_usage`` on (issue 19),
where the script is first made what the real API sends an app that did not
ask for usage (``without_usage``); the server adds the usage chunk and the
``usage: null`` fields for the instrumented run, which asked for them, and
the app must still see what the uninstrumented app sees without the option.
"""

from __future__ import annotations

from typing import Any, List, Optional

import openai
import pytest
from hypothesis import given, settings
from opentelemetry.trace import StatusCode

from hardening_scripts import (
    STALL_THRESHOLD,
    Scenario,
    aconsume,
    assert_same_app_view,
    consume,
    expected,
    scenarios,
    without_usage,
)
from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from otel_helpers import Telemetry, make_telemetry

PROFILE = settings.get_profile("hardening")
_ERRORS = (t.OUTCOME_TRUNCATED, t.OUTCOME_FAILED)




class Instrumented:
    """Instrument for the duration of a ``with`` block, on fresh in-memory providers."""

    def __init__(self, **kwargs: Any) -> None:
        self.telemetry: Telemetry = make_telemetry()
        self.kwargs = kwargs

    def __enter__(self) -> Telemetry:
        instrumentor = LLMStreamInstrumentor()
        instrumentor.instrument(
            tracer_provider=self.telemetry.tracer_provider,
            meter_provider=self.telemetry.meter_provider,
            stall_threshold=STALL_THRESHOLD,
            **self.kwargs,
        )
        self.telemetry.instrumentor = instrumentor
        return self.telemetry

    def __exit__(self, *exc: Any) -> None:
        self.telemetry.instrumentor.uninstrument()


def check_telemetry(telemetry: Telemetry, scn: Scenario, plain_exc: Optional[BaseException], chunks: List[Any]) -> None:
    exp = expected(scn, plain_exc)
    spans = telemetry.stream_spans()
    assert len(spans) == 1, f"{len(spans)} spans for one stream"
    span = spans[0]
    attrs = dict(span.attributes)
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == (exp.outcome, exp.reason), (attrs, plain_exc)
    assert attrs[t.CHUNKS] == exp.chunks == len(chunks)
    assert attrs[t.GEN_AI_REQUEST_STREAM] is True
    if exp.outcome in _ERRORS:
        assert span.status.status_code == StatusCode.ERROR
        assert attrs[t.ERROR_TYPE]
    else:
        assert span.status.status_code == StatusCode.UNSET
        assert t.ERROR_TYPE not in attrs
    if exp.stall:
        # The server pauses STALL_SECONDS between two chunks; the client can only see a
        # shorter gap if it was late reading the first one, never shorter than the threshold
        # unless it was late by more than STALL_SECONDS - STALL_THRESHOLD.
        assert attrs[t.STALL_COUNT] >= 1 and attrs[t.MAX_GAP] > STALL_THRESHOLD, attrs
    points = telemetry.points(t.METRIC_OUTCOMES)
    assert [p.value for p in points] == [1]
    assert points[0].attributes[t.OUTCOME] == exp.outcome
    assert points[0].attributes.get(t.TRUNCATION_REASON) == exp.reason
    assert telemetry.total(t.METRIC_DURATION) == 1


INCLUDE_USAGE = pytest.mark.parametrize("include_usage", [False, True], ids=["usage-off", "usage-on"])


def _as_sent(scn: Scenario, include_usage: bool) -> Scenario:
    return without_usage(scn) if include_usage else scn


def check_usage(telemetry: Telemetry, scn: Scenario, plain_exc: Optional[BaseException], include_usage: bool) -> None:
    """With the setting on, a chat/completions stream read through its [DONE] has the usage we asked for."""
    if include_usage and scn.endpoint != "responses" and plain_exc is None and "[DONE]" in scn.delivered():
        assert dict(telemetry.stream_spans()[0].attributes)[t.GEN_AI_USAGE_OUTPUT_TOKENS] == 4


def _run_sync(client: openai.OpenAI, scn: Scenario, our_logs: Any, include_usage: bool) -> None:
    scn = _as_sent(scn, include_usage)
    plain = consume(client, scn)
    our_logs.clear()
    with Instrumented(include_usage=include_usage) as telemetry:
        got = consume(client, scn)
    assert_same_app_view(plain, got)
    check_telemetry(telemetry, scn, plain[1], got[0])
    check_usage(telemetry, scn, plain[1], include_usage)
    assert our_logs.internal_errors() == [], [r.getMessage() for r in our_logs.internal_errors()]


@INCLUDE_USAGE
@settings(PROFILE)
@given(scn=scenarios("chat"))
def test_chat_sync_script(sync_client, our_logs, include_usage, scn):
    _run_sync(sync_client, scn, our_logs, include_usage)


@INCLUDE_USAGE
@settings(PROFILE)
@given(scn=scenarios("completions"))
def test_completions_sync_script(sync_client, our_logs, include_usage, scn):
    _run_sync(sync_client, scn, our_logs, include_usage)


@INCLUDE_USAGE
@settings(PROFILE)
@given(scn=scenarios("responses"))
def test_responses_sync_script(sync_client, our_logs, include_usage, scn):
    _run_sync(sync_client, scn, our_logs, include_usage)


@INCLUDE_USAGE
@settings(PROFILE)
@given(scn=scenarios())
def test_async_script(loop_client, our_logs, include_usage, scn):
    loop, client = loop_client
    scn = _as_sent(scn, include_usage)
    plain = loop.run(aconsume(client, scn))
    our_logs.clear()
    with Instrumented(include_usage=include_usage) as telemetry:
        got = loop.run(aconsume(client, scn))
    assert_same_app_view(plain, got)
    check_telemetry(telemetry, scn, plain[1], got[0])
    check_usage(telemetry, scn, plain[1], include_usage)
    assert our_logs.internal_errors() == []
