"""OTEL_INSTRUMENTATION_LLM_STREAM_INCLUDE_USAGE (issue 19, item 5), through the real client and fault server.

With the setting on, a chat / legacy completions stream whose app did not ask
for usage is sent ``stream_options.include_usage``; the usage is recorded and
the app reads exactly what it reads uninstrumented without the option: the
same chunks (``to_dict()``, pydantic equality, which includes the fields
that were set), the same count, the same exception.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, List, Optional, Tuple

import openai
import pytest

from llm_stream_otel import LLMStreamInstrumentor
from llm_stream_otel import semconv as t
from llm_stream_otel.config import ENV_INCLUDE_USAGE, load_settings
from llm_stream_otel.providers.openai.include_usage import with_usage_requested
from otel_helpers import Telemetry, make_telemetry
from streaming import aconsume, consume, unique_prompt

FAULTS = ("none", "length", "reset_between;after=2", "cut_mid_chunk;after=3", "missing_terminator;after=2")
View = Tuple[List[Any], Optional[BaseException]]


def _instrument(include_usage: Optional[bool]) -> Telemetry:
    telemetry = make_telemetry()
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        include_usage=include_usage,
    )
    telemetry.instrumentor = instrumentor
    return telemetry


def _uninstrument(telemetry: Telemetry) -> None:
    gc.collect()
    telemetry.instrumentor.uninstrument()




def _dicts(chunks: List[Any]) -> List[dict]:
    """``to_dict()`` of each chunk, without the per-request id and timestamp."""
    out = []
    for chunk in chunks:
        d = chunk.to_dict()
        d.pop("id", None)
        d.pop("created", None)
        out.append(d)
    return out


def exception_view(exc: Optional[BaseException]) -> Any:
    if exc is None:
        return None
    cause = exc.__cause__ or exc.__context__
    return type(exc), str(exc), type(cause)


def assert_same_view(plain: View, got: View) -> None:
    assert len(got[0]) == len(plain[0])
    assert _dicts(got[0]) == _dicts(plain[0])
    assert [sorted(c.model_fields_set) for c in got[0]] == [sorted(c.model_fields_set) for c in plain[0]]
    assert [type(c) for c in got[0]] == [type(c) for c in plain[0]]
    assert exception_view(got[1]) == exception_view(plain[1])


class _SyncClient:
    def __init__(self, server: Any) -> None:
        self.base_url = server.base_url

    def both(self, endpoint: str, fault: str, include_usage: Optional[bool], kw: dict) -> Tuple[View, View, Telemetry]:
        with openai.OpenAI(base_url=self.base_url, api_key="sk-test", max_retries=0) as client:
            prompt = unique_prompt("usage")
            plain = consume(client, endpoint, fault, prompt=prompt, **kw)
            telemetry = _instrument(include_usage)
            try:
                got = consume(client, endpoint, fault, prompt=prompt, **kw)
            finally:
                _uninstrument(telemetry)
        return plain, got, telemetry


class _AsyncClient(_SyncClient):
    def both(self, endpoint: str, fault: str, include_usage: Optional[bool], kw: dict) -> Tuple[View, View, Telemetry]:
        async def main() -> Tuple[View, View, Telemetry]:
            async with openai.AsyncOpenAI(base_url=self.base_url, api_key="sk-test", max_retries=0) as client:
                prompt = unique_prompt("usage")
                plain = await aconsume(client, endpoint, fault, prompt=prompt, **kw)
                telemetry = _instrument(include_usage)
                try:
                    got = await aconsume(client, endpoint, fault, prompt=prompt, **kw)
                finally:
                    _uninstrument(telemetry)
            return plain, got, telemetry

        return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def any_client(request, server):
    return (_SyncClient if request.param == "sync" else _AsyncClient)(server)


@pytest.fixture
def client(server):
    return _SyncClient(server)


def _run(client: Any, endpoint: str, fault: str, include_usage: Optional[bool], **kw: Any) -> Tuple[View, View, Telemetry]:
    """The app uninstrumented, then instrumented; same prompt, same request arguments."""
    return client.both(endpoint, fault, include_usage, kw)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("fault", FAULTS)
def test_usage_is_recorded_and_the_app_sees_what_it_asked_for(any_client, endpoint, fault):
    plain, got, telemetry = _run(any_client, endpoint, fault, True)
    assert plain[0] and all(getattr(c, "usage", None) is None for c in plain[0])
    assert_same_view(plain, got)
    assert all("usage" not in c.model_fields_set for c in got[0])
    (span,) = telemetry.stream_spans()
    attrs = dict(span.attributes)
    assert attrs[t.CHUNKS] == len(got[0])  # the hidden usage chunk is not counted as one the app read
    if fault in ("none", "length"):
        assert attrs[t.GEN_AI_USAGE_INPUT_TOKENS] >= 1
        assert attrs[t.GEN_AI_USAGE_OUTPUT_TOKENS] == 6
        assert telemetry.total(t.METRIC_TOKEN_USAGE) == 2
    else:  # cut before the usage chunk: nothing to record, and nothing made up
        assert t.GEN_AI_USAGE_INPUT_TOKENS not in attrs


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_setting_off_changes_nothing(any_client, endpoint):
    plain, got, telemetry = _run(any_client, endpoint, "none", None)
    assert_same_view(plain, got)
    assert t.GEN_AI_USAGE_INPUT_TOKENS not in dict(telemetry.stream_spans()[0].attributes)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_an_app_that_asked_for_usage_sees_its_usage_chunk(any_client, endpoint):
    plain, got, telemetry = _run(any_client, endpoint, "none", True, stream_options={"include_usage": True})
    assert got[0][-1].choices == [] and got[0][-1].usage is not None
    assert all("usage" in c.model_fields_set for c in got[0])  # the server's usage: null, as without us
    assert_same_view(plain, got)
    assert dict(telemetry.stream_spans()[0].attributes)[t.GEN_AI_USAGE_OUTPUT_TOKENS] == 6


def test_an_explicit_false_is_kept(client):
    plain, got, telemetry = _run(client, "chat", "none", True, stream_options={"include_usage": False})
    assert_same_view(plain, got)
    assert t.GEN_AI_USAGE_INPUT_TOKENS not in dict(telemetry.stream_spans()[0].attributes)


def test_other_stream_options_are_kept_and_merged(client):
    plain, got, telemetry = _run(client, "chat", "none", True, stream_options={"include_obfuscation": False})
    assert_same_view(plain, got)
    assert dict(telemetry.stream_spans()[0].attributes)[t.GEN_AI_USAGE_OUTPUT_TOKENS] == 6


def test_the_request_rewrite():
    options = {"include_obfuscation": False}
    kwargs = {"model": "m", "stream": True, "stream_options": options}
    assert with_usage_requested("chat", kwargs)["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert options == {"include_obfuscation": False}  # the app's dict is not changed
    assert with_usage_requested("completions", {"stream": True})["stream_options"] == {"include_usage": True}
    assert with_usage_requested("chat", {"stream_options": openai.NOT_GIVEN})["stream_options"] == {"include_usage": True}
    assert with_usage_requested("chat", {"stream_options": {"include_usage": False}}) is None
    assert with_usage_requested("chat", {"stream_options": {"include_usage": True}}) is None
    assert with_usage_requested("responses", {"stream": True}) is None


def test_the_setting_is_read_from_the_environment():
    assert load_settings(environ={ENV_INCLUDE_USAGE: "true"}).include_usage is True
    assert load_settings(environ={}).include_usage is False
    assert load_settings({"include_usage": False}, environ={ENV_INCLUDE_USAGE: "true"}).include_usage is False
