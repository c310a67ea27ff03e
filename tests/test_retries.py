"""Retry attempts at each layer, recoveries and the fix rate (issue 4)."""

from __future__ import annotations

import time

import openai

from llm_stream_otel import semconv as t
from streaming import consume, unique_prompt


def fix_rate(telemetry):
    truncated_first = telemetry.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_TRUNCATED, llm__stream__is_retry=False)
    recoveries = telemetry.total(t.METRIC_RECOVERIES)
    return recoveries / truncated_first if truncated_first else None


def app_retry_loop(client, fault, prompt, attempts=3):
    """The seed's workaround: retry the same request when the stream breaks."""
    for attempt in range(attempts):
        chunks, exc = consume(client, "chat", fault, prompt=prompt)
        if exc is None:
            return attempt + 1
        time.sleep(0.01)
    return None


def test_sdk_retries_counted_for_500_then_stream(instrumented, server):
    prompt = unique_prompt("sdk")
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2) as client:
        chunks, exc = consume(client, "chat", "http_500;first=2", prompt=prompt)
    assert exc is None and chunks
    mine = [r for r in server.requests if r.body and r.body.get("messages", [{}])[0].get("content") == prompt]
    assert [r.headers.get("x-stainless-retry-count") for r in mine] == ["0", "1", "2"]
    span = instrumented.span()
    assert span.attributes[t.SDK_RETRIES] == 2
    assert span.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 2
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0


def test_sdk_retries_exhausted_is_one_failed_call(instrumented, server):
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=1) as client:
        chunks, exc = consume(client, "chat", "http_503")
    assert isinstance(exc, openai.InternalServerError)
    span = instrumented.span()
    assert (span.attributes[t.OUTCOME], span.attributes[t.SDK_RETRIES]) == (t.OUTCOME_FAILED, 1)
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="sdk") == 1


def test_cut_once_then_ok_is_fixed(instrumented, client):
    attempts = app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("once"))
    assert attempts == 2
    first, second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert first.attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert first.attributes[t.ATTEMPT] == 1 and first.attributes[t.IS_RETRY] is False
    assert second.attributes[t.OUTCOME] == t.OUTCOME_COMPLETED
    assert second.attributes[t.ATTEMPT] == 2 and second.attributes[t.IS_RETRY] is True
    assert second.attributes[t.RETRY_LAYER] == "application"
    assert second.attributes[t.RECOVERED_AFTER_ATTEMPTS] == 2
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 1
    assert instrumented.total(t.METRIC_RECOVERIES) == 1
    assert instrumented.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_COMPLETED, llm__stream__is_retry=True) == 1
    assert fix_rate(instrumented) == 1.0


def test_cut_cut_ok_is_one_truncated_call_and_one_fix(instrumented, client):
    assert app_retry_loop(client, "cut_mid_chunk;after=1;first=2", unique_prompt("twice")) == 3
    spans = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert [s.attributes[t.ATTEMPT] for s in spans] == [1, 2, 3]
    assert [link.context.span_id for link in spans[2].links] == [spans[1].context.span_id]
    assert spans[2].attributes[t.RECOVERED_AFTER_ATTEMPTS] == 3
    assert instrumented.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_TRUNCATED, llm__stream__is_retry=False) == 1
    assert instrumented.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_TRUNCATED, llm__stream__is_retry=True) == 1
    assert instrumented.total(t.METRIC_RECOVERIES) == 1
    assert fix_rate(instrumented) == 1.0


def test_always_cut_fix_rate_zero(instrumented, client):
    assert app_retry_loop(client, "reset_mid_chunk;after=1", unique_prompt("always")) is None
    assert instrumented.total(t.METRIC_OUTCOMES, llm__stream__outcome=t.OUTCOME_TRUNCATED) == 3
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 2
    assert instrumented.total(t.METRIC_RECOVERIES) == 0
    assert fix_rate(instrumented) == 0.0


def test_different_requests_are_not_retries(instrumented, client):
    consume(client, "chat", "reset_between;after=1", prompt=unique_prompt("a"))
    consume(client, "chat", "none", prompt=unique_prompt("b"))
    assert instrumented.total(t.METRIC_RETRIES) == 0
    assert instrumented.total(t.METRIC_RECOVERIES) == 0


def test_success_does_not_start_a_chain(instrumented, client):
    prompt = unique_prompt("ok-ok")
    consume(client, "chat", "none", prompt=prompt)
    consume(client, "chat", "none", prompt=prompt)
    assert instrumented.total(t.METRIC_RETRIES) == 0
    assert len(instrumented.instrumentor.telemetry.retries) == 0


def test_a_request_is_fingerprinted_only_when_a_repeat_of_it_could_matter(instrumented, client, monkeypatch):
    """The fingerprint (about 30,000 instructions) is built at the start only while a cut or
    failed request waits in the table, else at the end of an attempt that is cut or fails:
    healthy traffic never pays for it, and retries are recognised as before."""
    from llm_stream_otel.providers import base

    built = []
    real = base.request_fingerprint

    def spy(kind, base_url, kwargs, *args, **kw):
        built.append(kwargs["messages"][0]["content"])
        return real(kind, base_url, kwargs, *args, **kw)

    monkeypatch.setattr(base.Provider, "fingerprint", staticmethod(spy))
    ok, cut = unique_prompt("healthy"), unique_prompt("cut-then-ok")
    consume(client, "chat", "none", prompt=ok)
    consume(client, "chat", "none", prompt=ok)
    assert built == []
    consume(client, "chat", "reset_between;after=2", prompt=cut)
    assert built == [cut]  # at the end of the cut attempt
    consume(client, "chat", "none", prompt=cut)
    assert built == [cut, cut]  # at the start: a cut request waits in the table
    spans = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert [(s.attributes[t.ATTEMPT], s.attributes[t.IS_RETRY]) for s in spans] == [(1, False), (1, False), (1, False), (2, True)]
    assert instrumented.total(t.METRIC_RECOVERIES) == 1
    consume(client, "chat", "none", prompt=ok)  # the chain is settled: the table is empty again
    assert built == [cut, cut] and len(instrumented.instrumentor.telemetry.retries) == 0


def test_retry_window_expires(telemetry, client):
    from llm_stream_otel import LLMStreamInstrumentor

    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, retry_window=0.2)
    try:
        prompt = unique_prompt("window")
        consume(client, "chat", "reset_between;after=1", prompt=prompt)
        time.sleep(0.3)
        consume(client, "chat", "none", prompt=prompt)
    finally:
        instrumentor.uninstrument()
    assert telemetry.total(t.METRIC_RETRIES) == 0


def test_fingerprint_table_is_bounded(telemetry):
    from llm_stream_otel.metrics.instruments import Instruments
    from llm_stream_otel.retries.attempts import RetryTracker
    from opentelemetry.trace import INVALID_SPAN

    tracker = RetryTracker(Instruments(telemetry.meter_provider.get_meter("t")), window=300, max_entries=50)
    for i in range(500):
        attempt = tracker.start(i.to_bytes(16, "big"), float(i), {})
        tracker.finish(attempt, t.OUTCOME_TRUNCATED, INVALID_SPAN, {}, float(i))
    assert len(tracker) == 50
    # the newest are kept, the oldest evicted
    assert tracker.start((499).to_bytes(16, "big"), 500.0, {}).is_retry
    assert not tracker.start((0).to_bytes(16, "big"), 500.0, {}).is_retry


# --- issue 12: whose repeat is a retry ---------------------------------------


def test_retry_loop_inside_one_trace_is_a_retry_by_trace_evidence(instrumented, client):
    tracer = instrumented.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handler"):
        assert app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("traced")) == 2
    first, second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)
    assert second.attributes[t.IS_RETRY] is True
    assert second.attributes[t.RETRY_EVIDENCE] == "trace"
    assert t.RETRY_EVIDENCE not in first.attributes
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_same_request_in_two_traces_is_not_a_retry(instrumented, client):
    tracer = instrumented.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("user-1"):
        consume(client, "chat", "reset_between;after=1", prompt="hi")
    with tracer.start_as_current_span("user-2"):
        consume(client, "chat", "none", prompt="hi")
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0
    assert instrumented.total(t.METRIC_RECOVERIES) == 0


def test_untraced_script_retry_loop_counts_by_fingerprint(instrumented, client):
    assert app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("script")) == 2
    second = sorted(instrumented.stream_spans(), key=lambda s: s.start_time)[1]
    assert second.attributes[t.RETRY_EVIDENCE] == "fingerprint"
    assert instrumented.total(t.METRIC_RECOVERIES) == 1


def test_unrelated_clients_sending_hi_do_not_count(instrumented, server):
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as one, openai.OpenAI(
        base_url=server.base_url, api_key="k", max_retries=0
    ) as other:
        consume(one, "chat", "reset_between;after=1", prompt="hi")
        consume(other, "chat", "none", prompt="hi")
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0
    assert instrumented.total(t.METRIC_RECOVERIES) == 0


def test_unrelated_threads_sending_hi_do_not_count(instrumented, client):
    import threading

    for fault in ("reset_between;after=1", "none"):  # one after the other, each in its own thread
        thread = threading.Thread(target=consume, args=(client, "chat", fault), kwargs={"prompt": "hi"})
        thread.start()
        thread.join()
    assert instrumented.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 0
    assert instrumented.total(t.METRIC_RECOVERIES) == 0


def _instrument(telemetry, **kw):
    from llm_stream_otel import LLMStreamInstrumentor

    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **kw)
    return instrumentor


def test_trace_mode_ignores_untraced_repeats(telemetry, client):
    instrumentor = _instrument(telemetry, app_retries="trace")
    try:
        assert app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("trace-mode")) == 2
        with telemetry.tracer_provider.get_tracer("app").start_as_current_span("handler"):
            assert app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("trace-mode-2")) == 2
    finally:
        instrumentor.uninstrument()
    assert telemetry.total(t.METRIC_RETRIES, llm__stream__retry__layer="application") == 1
    assert telemetry.total(t.METRIC_RECOVERIES) == 1


def test_off_mode_attributes_no_application_retry(telemetry, client, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_LLM_STREAM_APP_RETRIES", "off")
    instrumentor = _instrument(telemetry)
    try:
        with telemetry.tracer_provider.get_tracer("app").start_as_current_span("handler"):
            assert app_retry_loop(client, "reset_between;after=2;first=1", unique_prompt("off")) == 2
    finally:
        instrumentor.uninstrument()
    assert telemetry.total(t.METRIC_RETRIES) == 0
    assert telemetry.total(t.METRIC_RECOVERIES) == 0
    assert all(s.attributes.get(t.IS_RETRY) is not True for s in telemetry.stream_spans())


def test_bad_app_retries_value_warns_and_uses_auto(caplog):
    from llm_stream_otel.config import ENV_APP_RETRIES, load_settings

    with caplog.at_level("WARNING"):
        settings = load_settings(environ={ENV_APP_RETRIES: "sometimes"})
    assert settings.app_retries == "auto"
    assert ENV_APP_RETRIES in caplog.text
    assert load_settings(environ={ENV_APP_RETRIES: " TRACE "}).app_retries == "trace"


def _image_request(url):
    return dict(model="m", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])


def test_fingerprint_is_bounded_in_request_size():
    """O(1) in the request size: a 4 MB image message costs about what "hi" costs."""
    import base64
    import os
    import timeit

    from llm_stream_otel.retries.fingerprint import request_fingerprint

    image = "data:image/png;base64," + base64.b64encode(os.urandom(3_000_000)).decode()
    big, small = _image_request(image), dict(model="m", messages=[{"role": "user", "content": "hi"}])

    def cost(kw):
        return min(timeit.repeat(lambda: request_fingerprint("chat", "u", kw), number=200, repeat=5)) / 200

    assert cost(big) < 5 * cost(small) + 20e-6
    other = _image_request(image[:-10] + "AAAAAAAAAA")  # same length, different end
    assert request_fingerprint("chat", "u", big) != request_fingerprint("chat", "u", other)
