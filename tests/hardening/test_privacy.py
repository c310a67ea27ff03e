"""Privacy and security (issue 8).

- Every exported span (name, attributes, events, links, status), every
  metric point (attributes, exemplars) and every log record (message and
  traceback) is scanned for the prompt text, the completion text and the API
  key. Off by default: neither text anywhere. Opted in
  (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``): the
  completion may appear, capped in size; the API key never does, not even
  from a base URL with ``user:password@`` in it.
- Metric attribute cardinality is bounded: only model names and server
  addresses are free text, their distinct values are capped (then
  ``_OTHER``), and every other metric attribute comes from a closed set.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Iterator, List

import openai
import pytest

from hardening_scripts import Scenario, consume as consume_script
from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from llm_stream_otel.config import CONTENT_CAPTURE_LIMIT, ENV_CAPTURE_CONTENT
from llm_stream_otel.stream.monitor import StreamMonitor
from otel_helpers import Telemetry, make_telemetry

KEY = "sk-proj-HARDENING-" + uuid.uuid4().hex
PROMPT = "PROMPT-PRIVATE-" + uuid.uuid4().hex[:12]
COMPLETION = "COMPLETION-PRIVATE-" + uuid.uuid4().hex[:12]
FAULTS = ("none", "reset_mid_chunk", "cut_mid_chunk", "missing_terminator", "error_event", "http_500")


class AllRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        """Our records (httpx and openai log URLs and request options at DEBUG: not ours to police)."""
        return "\n".join(self.format(r) for r in self.records if r.name.startswith("llm_stream_otel"))


@pytest.fixture
def all_logs() -> Iterator[AllRecords]:
    """Every log record at DEBUG (ours are scanned, with their tracebacks)."""
    root = logging.getLogger()
    handler = AllRecords()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    ours = logging.getLogger("llm_stream_otel")
    ours_old = ours.level
    ours.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        ours.setLevel(ours_old)


def exported_text(telemetry: Telemetry) -> str:
    """Everything the exporters would send, as one string."""
    parts: List[str] = []
    for span in telemetry.spans():
        parts.append(span.name)
        parts.append(repr(dict(span.attributes or {})))
        parts.append(repr(span.status.description))
        parts.append(repr(dict(span.resource.attributes)))
        for event in span.events:
            parts.append(event.name + repr(dict(event.attributes or {})))
        for link in span.links:
            parts.append(repr(dict(link.attributes or {})))
    data = telemetry.reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    parts.append(metric.name + repr(dict(point.attributes)))
                    for exemplar in getattr(point, "exemplars", None) or []:
                        parts.append(repr(dict(exemplar.filtered_attributes or {})))
    return "\n".join(parts)


def scripted_events(endpoint: str) -> List[str]:
    """A stream whose completion text is COMPLETION (twice), then its terminal events."""
    import json

    if endpoint == "responses":
        delta = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0}
        done = {"type": "response.completed", "response": {"id": "resp_1", "model": "gpt-script", "status": "completed",
                                                           "output": []}}
        return [json.dumps({**delta, "delta": COMPLETION, "sequence_number": 1}),
                json.dumps({**delta, "delta": " " + COMPLETION, "sequence_number": 2}),
                json.dumps({**done, "sequence_number": 3})]
    env = {"id": "c1", "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
           "created": 1, "model": "gpt-script"}

    def choice(text: str, finish: Any = None) -> dict:
        if endpoint == "chat":
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish}

    return [json.dumps({**env, "choices": [choice(COMPLETION)]}), json.dumps({**env, "choices": [choice(" " + COMPLETION)]}),
            json.dumps({**env, "choices": [choice("", "stop")]}), "[DONE]"]


def run_everything(server: Any, monkeypatch: Any, capture: bool) -> Telemetry:
    """Every endpoint x fault, sync, with the key in api_key AND in the base URL's userinfo;
    plus one stream where our own code fails (so its traceback is logged)."""
    if capture:
        monkeypatch.setenv(ENV_CAPTURE_CONTENT, "true")
    else:
        monkeypatch.delenv(ENV_CAPTURE_CONTENT, raising=False)
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            stall_threshold=0.05)
    assert instrumentor.telemetry.settings.capture_content is capture
    base = server.base_url.replace("http://", f"http://user:{KEY}@")
    try:
        with openai.OpenAI(base_url=base, api_key=KEY, max_retries=0) as client:
            for endpoint in ("chat", "completions", "responses"):
                for fault in FAULTS + ("stall",):
                    events = scripted_events(endpoint)
                    scn = Scenario(endpoint, events, fault=fault, at=None if fault in ("none", "http_500") else 1,
                                   seconds=0.1)
                    consume_script(client, scn, prompt=PROMPT)
            original = StreamMonitor.end
            StreamMonitor.end = lambda self, now: (_ for _ in ()).throw(RuntimeError("bug while ending"))
            try:
                consume_script(client, Scenario("chat", scripted_events("chat")), prompt=PROMPT)
            finally:
                StreamMonitor.end = original
    finally:
        instrumentor.uninstrument()
    return telemetry


@pytest.mark.usefixtures("lenient_mode")  # injects a failure on purpose
@pytest.mark.parametrize("capture", [False, True], ids=["capture_off", "capture_on"])
def test_no_prompt_completion_or_key_anywhere(server, monkeypatch, all_logs, fresh_guard, capture):
    telemetry = run_everything(server, monkeypatch, capture)
    exported = exported_text(telemetry)
    logs = all_logs.text()
    assert len(telemetry.stream_spans()) == 3 * (len(FAULTS) + 1) + 1
    assert "internal error in stream finalization" in logs  # the traceback was logged, and scanned
    for where, text in (("exported telemetry", exported), ("logs", logs)):
        assert KEY not in text, f"API key in {where}"
        assert KEY[:20] not in text, f"part of the API key in {where}"
        assert PROMPT not in text, f"prompt text in {where}"
    assert COMPLETION not in logs
    spans = telemetry.stream_spans()
    assert {s.attributes[t.SERVER_ADDRESS] for s in spans} == {"127.0.0.1"}  # userinfo stripped
    captured = [e.attributes["gen_ai.completion"] for s in spans for e in s.events if e.name == t.EVENT_CHUNK]
    if capture:
        assert COMPLETION in exported and captured
        assert all(COMPLETION in c for c in captured)
    else:
        assert COMPLETION not in exported, "completion text exported without opt-in"
        assert captured == []


def test_captured_content_is_capped(server, monkeypatch):
    """Opted in, a 1 MB completion is exported as at most CONTENT_CAPTURE_LIMIT characters."""
    import json

    monkeypatch.setenv(ENV_CAPTURE_CONTENT, "true")
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    env = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-script"}
    events = [json.dumps({**env, "choices": [{"index": 0, "delta": {"content": "é" * 250_000}, "finish_reason": None}]})
              for _ in range(4)]
    events += [json.dumps({**env, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), "[DONE]"]
    try:
        with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
            chunks, exc = consume_script(client, Scenario("chat", events))
    finally:
        instrumentor.uninstrument()
    assert exc is None and len(chunks) == 5
    (span,) = telemetry.stream_spans()
    captured = [e.attributes["gen_ai.completion"] for e in span.events if e.name == t.EVENT_CHUNK]
    assert len(captured) == 1 and 0 < len(captured[0]) <= CONTENT_CAPTURE_LIMIT
    assert sum(len(str(v)) for e in span.events for v in e.attributes.values()) <= CONTENT_CAPTURE_LIMIT + 1000


def test_provider_error_quoting_the_prompt_is_not_exported(server, monkeypatch):
    import json

    monkeypatch.delenv(ENV_CAPTURE_CONTENT, raising=False)
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    echo = json.dumps({"error": {"message": f"content policy: '{PROMPT}' is not allowed", "type": "invalid_request"}})
    try:
        with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
            chunks, exc = consume_script(client, Scenario("chat", [echo]), prompt=PROMPT)
    finally:
        instrumentor.uninstrument()
    assert isinstance(exc, openai.APIError) and PROMPT in str(exc)  # the app sees the provider's message
    assert telemetry.span().attributes[t.OUTCOME] == t.OUTCOME_TRUNCATED
    assert PROMPT not in exported_text(telemetry)


# --------------------------------------------------------------------------- cardinality

# Every metric attribute key we may emit; only the first two carry free text.
FREE_TEXT_KEYS = {t.GEN_AI_REQUEST_MODEL, t.GEN_AI_RESPONSE_MODEL, t.SERVER_ADDRESS}
CLOSED_KEYS = {
    t.GEN_AI_OPERATION_NAME: {t.OPERATION_CHAT, t.OPERATION_TEXT_COMPLETION},
    t.GEN_AI_PROVIDER_NAME: {t.PROVIDER_OPENAI},
    t.OUTCOME: set(t.OUTCOMES),
    t.TRUNCATION_REASON: set(t.TRUNCATION_REASONS),
    t.IS_RETRY: {True, False},
    t.RETRY_LAYER: {t.RETRY_LAYER_SDK, t.RETRY_LAYER_APPLICATION, t.RETRY_LAYER_HELPER},
    t.GEN_AI_TOKEN_TYPE: {"input", "output"},
    t.CONNECTION_REUSED: {True, False},
    t.HTTP_INTERMEDIARY: {v for k, v in vars(t).items() if k.startswith("INTERMEDIARY_")} | {t.ERROR_TYPE_OTHER},
}
# Bounded, not free text: an HTTP status code and an exception class name (capped at 32).
OTHER_KEYS = {t.SERVER_PORT, t.ERROR_TYPE, t.HTTP_RESPONSE_STATUS_CODE, t.ERROR_CAUSE}


def metric_attribute_sets(telemetry: Telemetry) -> List[dict]:
    data = telemetry.reader.get_metrics_data()
    return [dict(point.attributes) for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
            if sm.scope.name == t.SCOPE_NAME for m in sm.metrics for point in m.data.data_points]


@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_free_text_metric_attributes_are_capped(server, monkeypatch, how):
    cap = 4
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("OTEL_INSTRUMENTATION_LLM_STREAM_MAX_ATTRIBUTE_VALUES", str(cap))
    else:
        kwargs["max_attribute_values"] = cap
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            **kwargs)
    models = [f"tenant-{i}-model" for i in range(12)]
    try:
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            for model in models:  # the fault server answers with the requested model as the response model
                for _ in client.chat.completions.create(model=model, stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]):
                    pass
        for k in range(2, 12):  # distinct server addresses: loopback aliases nobody listens on
            with openai.OpenAI(base_url=f"http://127.0.0.{k}:9/v1", api_key="k", max_retries=0, timeout=5) as dead:
                with pytest.raises(openai.APIConnectionError):
                    dead.chat.completions.create(model="gpt-test", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}])
    finally:
        instrumentor.uninstrument()
    # Spans keep the real values ...
    spans = telemetry.stream_spans()
    assert {s.attributes[t.GEN_AI_REQUEST_MODEL] for s in spans} >= set(models)
    # ... metrics keep at most `cap` distinct free-text values each, the rest is _OTHER.
    sets = metric_attribute_sets(telemetry)
    assert sets
    for key in (t.GEN_AI_REQUEST_MODEL, t.GEN_AI_RESPONSE_MODEL, t.SERVER_ADDRESS):
        values = {s[key] for s in sets if key in s}
        assert t.ERROR_TYPE_OTHER in values, (key, values)
        assert len(values - {t.ERROR_TYPE_OTHER}) <= cap, (key, values)
    request_models = {s[t.GEN_AI_REQUEST_MODEL] for s in sets if t.GEN_AI_REQUEST_MODEL in s}
    assert request_models - {t.ERROR_TYPE_OTHER} <= set(models) | {"gpt-test"}
    # Every other attribute comes from a closed set.
    for attrs in sets:
        unknown = set(attrs) - FREE_TEXT_KEYS - set(CLOSED_KEYS) - OTHER_KEYS
        assert not unknown, unknown
        for key, allowed in CLOSED_KEYS.items():
            if key in attrs:
                assert attrs[key] in allowed, (key, attrs[key])
        if t.ERROR_TYPE in attrs:  # a class name or a truncation reason, never a message
            assert attrs[t.ERROR_TYPE].isidentifier() or attrs[t.ERROR_TYPE] == t.ERROR_TYPE_OTHER


def test_default_cap_is_100_distinct_models(server):
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    try:
        limiter = instrumentor.telemetry.limit_model
        assert [limiter(f"m{i}") for i in range(150)][100:] == [t.ERROR_TYPE_OTHER] * 50
        assert limiter("m5") == "m5"  # a value seen before the cap keeps passing
    finally:
        instrumentor.uninstrument()
