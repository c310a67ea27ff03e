"""Every consumption pattern, under random scripts and faults (issue 8).

An app may read a stream fully, stop after ``k`` chunks (``break``, ``close()``,
leaving a ``with`` / ``async with`` block, dropping the last reference so the
span ends through garbage collection), look at ``.response`` first, read it
from another thread, or never iterate at all. For random scripts, faults and
``k``, the app's view (chunks, exception) is the same with and without us,
and exactly one span ends, once, with the outcome the script implies: the
stream's own outcome when it ended before the app stopped, else
``abandoned`` (or the terminal outcome if every choice had finished, or
``truncated``/``error_event`` after a Responses error event).

The SDK's stream helpers (``.stream()``, ``get_final_completion()``) are
covered with faults in ``test_consumption_patterns.py``.
"""

from __future__ import annotations

import gc
import threading
from typing import Any, List, Optional, Tuple

import openai
from hypothesis import given, settings
from hypothesis import strategies as st

from hardening_scripts import Scenario, create, expected, expected_abandon, scenarios
from llm_stream_otel import semconv as t
from test_transparency_property import Instrumented

PROFILE = settings.get_profile("hardening")
SYNC_PATTERNS = ("close", "for_break_close", "with", "gc", "response_then_close", "thread", "never_iterate_gc")
ASYNC_PATTERNS = ("close", "for_break_close", "async_with", "gc", "response_then_close", "never_iterate_close")

View = Tuple[List[Any], Optional[BaseException], bool]




def _read(stream: Any, k: int, chunks: List[Any]) -> Tuple[Optional[BaseException], bool]:
    """``next()`` until ``k`` chunks; (exception, did the stream end by itself)."""
    try:
        while len(chunks) < k:
            chunks.append(next(stream))
    except StopIteration:
        return None, True
    except Exception as exc:  # noqa: BLE001
        return exc, True
    return None, False


def _read_into(box: List[Any], stream: Any, k: int, chunks: List[Any]) -> None:
    box.append(_read(stream, k, chunks))


def drive_sync(client: openai.OpenAI, scn: Scenario, pattern: str, k: int) -> View:
    chunks: List[Any] = []
    try:
        stream = create(client, scn.endpoint, **scn.kwargs())
    except Exception as exc:  # noqa: BLE001
        return chunks, exc, True
    if pattern == "with":
        with stream as entered:
            assert entered is stream
            exc, ended = _read(entered, k, chunks)
            del entered
    elif pattern == "for_break_close":
        exc, ended = None, True
        try:
            if k:
                for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) >= k:
                        ended = False
                        break
        except Exception as e:  # noqa: BLE001
            exc = e
        if not k:
            ended = False
        stream.close()
    elif pattern == "response_then_close":
        response = stream.response
        assert response.status_code == 200 and "text/event-stream" in response.headers["content-type"]
        exc, ended = _read(stream, k, chunks)
        stream.close()
    elif pattern == "thread":
        box: List[Any] = []
        worker = threading.Thread(target=_read_into, args=(box, stream, k, chunks))
        worker.start()
        worker.join(30)
        exc, ended = box[0]
        stream.close()
    elif pattern == "never_iterate_gc":
        exc, ended = None, False
    else:  # close, gc
        exc, ended = _read(stream, k, chunks)
        if pattern == "close":
            stream.close()
            stream.close()  # twice: still one span
    del stream  # the last reference: the proxy's finalizer ends the span if nothing else did
    if pattern.endswith("gc"):
        gc.collect()
    return chunks, exc, ended


async def _aread(stream: Any, k: int, chunks: List[Any]) -> Tuple[Optional[BaseException], bool]:
    try:
        while len(chunks) < k:
            chunks.append(await stream.__anext__())
    except StopAsyncIteration:
        return None, True
    except Exception as exc:  # noqa: BLE001
        return exc, True
    return None, False


async def drive_async(client: openai.AsyncOpenAI, scn: Scenario, pattern: str, k: int) -> View:
    chunks: List[Any] = []
    try:
        stream = await create(client, scn.endpoint, **scn.kwargs())
    except Exception as exc:  # noqa: BLE001
        return chunks, exc, True
    if pattern == "async_with":
        async with stream as entered:
            assert entered is stream
            exc, ended = await _aread(entered, k, chunks)
            del entered
    elif pattern == "for_break_close":
        exc, ended = None, True
        try:
            if k:
                async for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) >= k:
                        ended = False
                        break
        except Exception as e:  # noqa: BLE001
            exc = e
        if not k:
            ended = False
        await stream.close()
    elif pattern == "response_then_close":
        assert stream.response.status_code == 200
        exc, ended = await _aread(stream, k, chunks)
        await stream.close()
    elif pattern == "never_iterate_close":
        exc, ended = None, False
        await stream.close()
    else:  # close, gc
        exc, ended = await _aread(stream, k, chunks)
        if pattern == "close":
            await stream.close()
    del stream
    if pattern == "gc":
        gc.collect()
    return chunks, exc, ended


def check(telemetry: Any, scn: Scenario, plain: View, got: View, k: int) -> None:
    plain_chunks, plain_exc, plain_ended = plain
    chunks, exc, ended = got
    assert ended == plain_ended
    assert [type(c) for c in chunks] == [type(c) for c in plain_chunks] and chunks == plain_chunks
    assert type(exc) is type(plain_exc) and str(exc) == str(plain_exc)
    exp = expected(scn, plain_exc) if ended else expected_abandon(scn, len(chunks))
    if ended:
        assert len(chunks) == exp.chunks
    spans = telemetry.stream_spans()
    assert len(spans) == 1, f"span ended {len(spans)} times"
    attrs = spans[0].attributes
    assert (attrs[t.OUTCOME], attrs.get(t.TRUNCATION_REASON)) == (exp.outcome, exp.reason), (attrs, plain_exc)
    assert attrs[t.CHUNKS] == len(chunks)
    assert telemetry.total(t.METRIC_OUTCOMES) == 1


@settings(PROFILE)
@given(scn=scenarios(), pattern=st.sampled_from(SYNC_PATTERNS), k=st.integers(0, 8))
def test_sync_consumption_patterns(sync_client, scn, pattern, k):
    plain = drive_sync(sync_client, scn, pattern, k)
    with Instrumented() as telemetry:
        got = drive_sync(sync_client, scn, pattern, k)
    check(telemetry, scn, plain, got, k)


@settings(PROFILE)
@given(scn=scenarios(), pattern=st.sampled_from(ASYNC_PATTERNS), k=st.integers(0, 8))
def test_async_consumption_patterns(loop_client, scn, pattern, k):
    loop, client = loop_client
    plain = loop.run(drive_async(client, scn, pattern, k))
    with Instrumented() as telemetry:
        got = loop.run(drive_async(client, scn, pattern, k))
    check(telemetry, scn, plain, got, k)
