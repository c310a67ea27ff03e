"""[DONE] on the wire, a break after the end, and provider shapes (issue 12), on real bodies."""

from __future__ import annotations

import openai
from opentelemetry.trace import StatusCode

from llm_stream_otel import semconv as t
from support import corpus
from support.replay_server import ReplayServer


def _serve(instrumented, name, served=None, ending="clean"):
    body = corpus.load(name)
    with ReplayServer() as server:
        server.add("x", body.raw if served is None else served, ending)
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            items, exc = [], None
            try:
                if body.kind == "responses":
                    stream = client.responses.create(model="m", input="hi", stream=True, extra_headers={"X-Case": "x"})
                else:
                    stream = client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers={"X-Case": "x"}
                    )
                for item in stream:
                    items.append(item)
            except Exception as error:  # noqa: BLE001
                exc = error
    return instrumented.span(), items, exc


def test_done_without_finish_reason_is_completed(instrumented):
    span, items, exc = _serve(instrumented, "pydantic-ai__test_snowflake_model_streaming")
    assert exc is None and items
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert span.attributes[t.FINISH_REASON_MISSING] is True
    assert t.TRUNCATION_REASON not in span.attributes
    assert span.status.status_code != StatusCode.ERROR
    assert span.attributes[t.GEN_AI_USAGE_INPUT_TOKENS] > 0


def test_no_done_and_no_finish_is_still_missing_terminator(instrumented):
    body = corpus.load("pydantic-ai__test_snowflake_model_streaming")
    done = [e for e in body.events if e.data.startswith("[DONE]")][0]
    span, items, exc = _serve(instrumented, body.name, body.raw[: done.start])
    assert exc is None
    assert (span.attributes[t.OUTCOME], span.attributes[t.TRUNCATION_REASON]) == ("truncated", "missing_terminator")
    assert t.FINISH_REASON_MISSING not in span.attributes


def test_events_after_done_do_not_hide_it(instrumented):
    """openai 1.x reads on after ``[DONE]`` (to reuse the connection): a later event must
    not make the stream look unterminated (found by the property tests on 1.x)."""
    body = corpus.load("pydantic-ai__test_snowflake_model_streaming")
    served = body.raw + b'data: {"error": {"message": "after the end"}}\n\n'
    span, items, exc = _serve(instrumented, body.name, served)
    assert exc is None and items
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert span.attributes[t.FINISH_REASON_MISSING] is True


def test_break_after_the_terminal_event_keeps_outcome_and_records_the_error(instrumented):
    span, items, exc = _serve(instrumented, "logfire__test_responses_stream", ending="rst")
    assert exc is not None  # the app sees the reset after response.completed
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert span.attributes[t.ERROR_AFTER_END] == type(exc).__qualname__
    assert span.status.status_code != StatusCode.ERROR


def test_azure_first_chunk_ids_are_filled_from_later_chunks(instrumented):
    span, items, exc = _serve(instrumented, "openllmetry__test_chat_streaming")
    assert items[0].id == "" and exc is None
    assert span.attributes[t.GEN_AI_RESPONSE_ID] == next(i.id for i in items if i.id)
    assert span.attributes[t.GEN_AI_RESPONSE_MODEL] == next(i.model for i in items if i.model)


def test_groq_usage_from_x_groq(instrumented):
    span, items, exc = _serve(instrumented, "openinference__TestTokenCounts.test_groq")
    assert (span.attributes[t.GEN_AI_USAGE_INPUT_TOKENS], span.attributes[t.GEN_AI_USAGE_OUTPUT_TOKENS]) == (12, 26)


def test_openrouter_error_object_after_length_carries_usage(instrumented):
    span, items, exc = _serve(instrumented, "pydantic-ai__test_openrouter_stream_error")
    assert isinstance(exc, openai.APIError)
    assert span.attributes[t.OUTCOME] == t.OUTCOME_LENGTH
    assert (span.attributes[t.GEN_AI_USAGE_INPUT_TOKENS], span.attributes[t.GEN_AI_USAGE_OUTPUT_TOKENS]) == (43, 10)
    assert span.attributes[t.ERROR_AFTER_END] == "APIError"


def test_doctor_says_how_done_is_observed():
    from llm_stream_otel.doctor import report

    assert "[DONE] on the wire: observed (" in report()


def test_openai_1x_events_are_read_off_the_decoder_with_no_frame_more():
    """openai 1.x: ``_iter_events`` only re-yields the decoder's events, so the recorder reads the
    decoder in its place (3.x translates transport errors there; 2.x and 3.x are peeked at instead)."""
    from openai._streaming import AsyncStream, ServerSentEvent, Stream

    from llm_stream_otel.providers.openai import wire

    major = int(openai.__version__.split(".")[0])
    plain = [wire._source_matches(cls._iter_events, wire._DECODER_ONLY[cls is AsyncStream]) for cls in (Stream, AsyncStream)]
    if major < 2:
        assert plain == [True, True] and wire.strategy() == wire.STRATEGY_RECORD
    else:
        assert wire.strategy() == wire.STRATEGY_PEEK  # the decoder path is never taken
        if major >= 3:
            assert plain == [False, False]
    assert wire.event_data_is_plain() and ServerSentEvent(data="[DONE]")._data == "[DONE]"
