"""Fixtures for the hardening suite (issue 8).

The root ``tests/conftest.py`` provides ``server`` (a session FaultServer),
``telemetry``, ``instrumented``, ``client`` and ``aclient``; this adds what
the hardening tests share: hypothesis profiles, a log collector that sees
every internal-error record (the guard logs the first at WARNING and the
rest at DEBUG), and a way to start from a clean guard.

Environment knobs:
- ``HARDENING_EXAMPLES``: hypothesis examples per property test (CI default is small).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, List

import openai
import pytest

from hardening_scripts import LoopThread
from hypothesis import HealthCheck, settings

from llm_stream_otel import guard

settings.register_profile(
    "hardening",
    deadline=None,
    database=None,
    print_blob=True,
    max_examples=int(os.environ.get("HARDENING_EXAMPLES", "40")),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


class LogCollector(logging.Handler):
    """Every record of the ``llm_stream_otel`` loggers, DEBUG included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def internal_errors(self) -> List[logging.LogRecord]:
        return [r for r in self.records if "internal error" in r.getMessage()]

    def clear(self) -> None:
        del self.records[:]


@pytest.fixture
def our_logs() -> Iterator[LogCollector]:
    logger = logging.getLogger("llm_stream_otel")
    collector = LogCollector()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(old_level)


@pytest.fixture
def fresh_guard() -> Iterator[None]:
    """Forget which internal errors were already reported, so 'logged once' is observable."""
    saved = set(guard._reported)
    guard._reported.clear()
    try:
        yield
    finally:
        guard._reported.clear()
        guard._reported.update(saved)


# Module-scoped clients shared by the property tests (sync, and async on a loop thread).
@pytest.fixture(scope="module")
def sync_client(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="sk-hardening-KEY", max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def loop_client(server) -> Iterator[Any]:
    loop = LoopThread()

    async def make() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-hardening-KEY", max_retries=0, timeout=20)

    client = loop.run(make())
    yield loop, client
    loop.run(client.close())
    loop.close()
