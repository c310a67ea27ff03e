from __future__ import annotations

import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The suite runs in strict mode: an internal error of ours raises instead of
# being swallowed (tests that inject failures on purpose turn it off).
os.environ.setdefault("OTEL_INSTRUMENTATION_LLM_STREAM_STRICT", "true")

import openai  # noqa: E402

from llm_stream_otel import LLMStreamInstrumentor  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402
import tests.support.scripted  # noqa: E402,F401 - registers the X-Script planner
from otel_helpers import Telemetry, make_telemetry  # noqa: E402


@pytest.fixture(scope="session")
def server():
    with FaultServer(chunks=6) as srv:
        yield srv


@pytest.fixture
def lenient_mode(monkeypatch):
    """Strict mode off, for a test that injects a failure into our code on purpose
    (use before ``instrumented``: the setting is read at ``instrument()``)."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_LLM_STREAM_STRICT", "false")


@pytest.fixture
def telemetry():
    return make_telemetry()


@pytest.fixture
def instrumented(telemetry: Telemetry):
    """The real instrumentor on real in-memory SDK providers; removed afterwards."""
    instrumentor = LLMStreamInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        stall_threshold=0.3,
    )
    telemetry.instrumentor = instrumentor
    yield telemetry
    gc.collect()
    instrumentor.uninstrument()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test-SECRET", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server):
    c = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test-SECRET", max_retries=0)
    yield c
    await c.close()
