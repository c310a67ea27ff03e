"""Transparent proxies around the SDK's ``Stream`` / ``AsyncStream``.

The application keeps the object it would have had: chunks pass through as
the same objects, exceptions are re-raised untouched, ``isinstance`` and
attribute access are forwarded by ``wrapt.ObjectProxy``. The proxies only
observe: every hook runs guarded, and every ending (end of stream,
exception, ``break`` + ``close()``, ``with`` exit, garbage collection) lands
in the shared ``StreamCall`` which finishes exactly once.

Sync and async share ``_ObservingProxy``; each subclass holds only the few
lines whose syntax differs (``next`` vs ``await anext``).
"""

from __future__ import annotations

import time
from typing import Any

import wrapt

from .call import StreamCall
from .guard import internal_error

_perf_counter = time.perf_counter


class _ObservingProxy(wrapt.ObjectProxy):  # type: ignore[misc]
    """Shared hooks: feed the monitor, settle the call; never raise."""

    def __init__(self, wrapped: Any, call: StreamCall) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_monitor = call.monitor

    def _self_chunk(self, chunk: Any) -> None:
        try:
            self._self_monitor.chunk(_perf_counter(), chunk)
        except Exception:  # noqa: BLE001
            internal_error("chunk processing")

    def _self_failed(self, exc: BaseException) -> None:
        self._self_call.stream_failed(exc)

    def _self_ended(self) -> None:
        self._self_call.stream_ended()

    def _self_abandon(self) -> None:
        self._self_call.abandoned()

    def __del__(self) -> None:
        # The application dropped the stream without reading it to the end.
        try:
            self._self_call.abandoned()
        except Exception:  # noqa: BLE001
            pass

    def __reduce_ex__(self, protocol: Any) -> Any:  # pragma: no cover - streams don't pickle anyway
        return self.__wrapped__.__reduce_ex__(protocol)


class SyncStreamProxy(_ObservingProxy):
    """Proxy for ``openai.Stream``."""

    def __iter__(self) -> "SyncStreamProxy":
        return self

    def __next__(self) -> Any:
        try:
            chunk = self.__wrapped__.__next__()
        except StopIteration:
            self._self_ended()
            raise
        except BaseException as exc:
            self._self_failed(exc)
            raise
        self._self_chunk(chunk)
        return chunk

    def __enter__(self) -> "SyncStreamProxy":
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_abandon()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_abandon()


class AsyncStreamProxy(_ObservingProxy):
    """Proxy for ``openai.AsyncStream``."""

    def __aiter__(self) -> "AsyncStreamProxy":
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_ended()
            raise
        except BaseException as exc:
            self._self_failed(exc)
            raise
        self._self_chunk(chunk)
        return chunk

    async def __aenter__(self) -> "AsyncStreamProxy":
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_abandon()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_abandon()

    async def aclose(self) -> None:
        try:
            await self.__wrapped__.aclose()
        finally:
            self._self_abandon()


def wrap_stream(result: Any, call: StreamCall) -> Any:
    """Wrap an SDK stream; anything else is returned untouched and its span ended."""
    if hasattr(result, "__anext__"):
        return AsyncStreamProxy(result, call)
    if hasattr(result, "__next__"):
        return SyncStreamProxy(result, call)
    call.abandoned()
    return result
