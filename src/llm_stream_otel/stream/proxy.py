"""Transparent proxies around the SDK's ``Stream`` / ``AsyncStream``.

The application keeps the object it would have had: chunks pass through as
the same objects, exceptions are re-raised untouched, ``isinstance`` and
attribute access are forwarded by ``wrapt.ObjectProxy``. The proxies only
observe: every hook runs guarded, and every ending (end of stream,
exception, ``break`` + ``close()``, ``with`` exit, garbage collection) lands
in the shared ``StreamCall`` which finishes exactly once.

Sync and async share ``_ObservingProxy``; each subclass holds only the few
lines whose syntax differs (``next`` vs ``await anext``).

Per-chunk cost (the hot loop of every stream; measured by ``bench/overhead.py``):
every attribute read on a ``wrapt`` proxy goes through its C ``getattro``
(~0.1 µs each), so the per-chunk code never touches the proxy's attributes.
``for``/``async for`` get a (async) generator from ``__iter__``/``__aiter__``
(as they do from the SDK's own ``Stream.__iter__``) that keeps the wrapped
stream, the monitor's ``chunk`` method and the call in locals, and holds the
proxy so that it lives as long as the iteration. It loops over the wrapped
stream's own iterator when its class defines ``__iter__`` and ``__next__``
together (the SDK's do), else it calls ``__next__``/``__anext__`` each time;
or over what the provider gives as its equivalent one generator layer
cheaper (``Provider.iterator``: openai's ``Stream.__iter__`` only re-yields
``self._iterator``, so the loop reads that). A direct ``next(stream)`` / ``await stream.__anext__()`` reads one bound
closure.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import wrapt

from .call import StreamCall
from .outcome import closed_locally
from ..guard import internal_error

_perf_counter = time.perf_counter
# What a compatible server's bare JSON value (``data: 42``) becomes: not an
# object a reader can read, and not our bug (runs only when a reader raised).
_NOT_OBJECTS = (int, float, str, bytes, list, tuple, type(None))


def _chunk_failed(chunk: Any) -> None:
    """A chunk reader raised: ours to count, unless the chunk is no object at all."""
    if not isinstance(chunk, _NOT_OBJECTS):
        internal_error("chunk processing")


def _closed_by_app(exc: BaseException, wrapped: Any) -> bool:
    """Did the read fail because the app closed ``stream.response`` itself?"""
    try:
        return bool(wrapped.response.is_closed) and closed_locally(exc)
    except Exception:  # noqa: BLE001
        return False


def _read_failed(call: StreamCall, wrapped: Any, exc: BaseException) -> None:
    if _closed_by_app(exc, wrapped):
        call.abandoned()  # the app stopped reading
    else:
        call.stream_failed(exc)


def _sync_step(wrapped: Any, on_chunk: Any, call: StreamCall) -> Any:
    """``__next__`` for one stream: pull a chunk, feed the monitor, settle on the end."""

    def step() -> Any:
        try:
            chunk = wrapped.__next__()
        except StopIteration:
            call.stream_ended()
            raise
        except BaseException as exc:
            _read_failed(call, wrapped, exc)
            raise
        try:
            on_chunk(_perf_counter(), chunk)
        except Exception:  # noqa: BLE001
            _chunk_failed(chunk)
        return chunk

    return step


def _async_step(wrapped: Any, on_chunk: Any, call: StreamCall) -> Any:
    """``__anext__`` for one stream."""

    async def step() -> Any:
        try:
            chunk = await wrapped.__anext__()
        except StopAsyncIteration:
            call.stream_ended()
            raise
        except BaseException as exc:
            _read_failed(call, wrapped, exc)
            raise
        try:
            on_chunk(_perf_counter(), chunk)
        except Exception:  # noqa: BLE001
            _chunk_failed(chunk)
        return chunk

    return step


@lru_cache(maxsize=256)
def _defined_together(cls: type, iter_name: str, next_name: str) -> bool:
    """Does the class that gives ``cls`` its ``__iter__`` also give it its ``__next__``?

    Then ``iter(wrapped)`` is what the class itself means by iteration (the
    SDK's ``Stream.__iter__`` and ``__next__`` both read ``self._iterator``),
    and a ``for`` loop over it saves a Python frame per chunk. A subclass that
    overrides ``__next__`` alone keeps being read through its ``__next__``.
    """
    iter_owner = next_owner = None
    for klass in cls.__mro__:
        namespace = vars(klass)
        if iter_owner is None and iter_name in namespace:
            iter_owner = klass
        if next_owner is None and next_name in namespace:
            next_owner = klass
    return iter_owner is not None and iter_owner is next_owner


def _pull(wrapped: Any) -> Any:
    """Iterate by calling ``wrapped.__next__()`` each time."""
    while True:
        try:
            chunk = wrapped.__next__()
        except StopIteration:
            return
        yield chunk


async def _apull(wrapped: Any) -> Any:
    while True:
        try:
            chunk = await wrapped.__anext__()
        except StopAsyncIteration:
            return
        yield chunk


def _sync_iterate(proxy: Any, wrapped: Any, on_chunk: Any, call: StreamCall, inner: Any = None) -> Any:
    """What ``iter(proxy)`` returns: the same steps as ``__next__``, as a generator.

    ``proxy`` is only held so that the stream is not garbage-collected (and
    counted as abandoned) while a ``for`` loop still iterates it. The only
    exception that can reach the ``yield`` from outside is ``GeneratorExit``
    (the loop was left and the generator closed): that is not an ending of
    the stream, which stays open until it is closed or collected.
    """
    if inner is not None and type(wrapped) is inner[0]:  # the provider's cheaper iter(wrapped) (Provider.iterator)
        source = inner[1]
    elif _defined_together(type(wrapped), "__iter__", "__next__"):
        source = iter(wrapped)
    else:
        source = _pull(wrapped)
    try:
        for chunk in source:
            try:
                on_chunk(_perf_counter(), chunk)
            except Exception:  # noqa: BLE001
                _chunk_failed(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        _read_failed(call, wrapped, exc)
        raise
    call.stream_ended()


async def _async_iterate(proxy: Any, wrapped: Any, on_chunk: Any, call: StreamCall, inner: Any = None) -> Any:
    """What ``aiter(proxy)`` returns (the SDK's ``AsyncStream.__aiter__`` is an async generator too)."""
    if inner is not None and type(wrapped) is inner[0]:
        source = inner[1]
    elif _defined_together(type(wrapped), "__aiter__", "__anext__"):
        source = wrapped.__aiter__()
    else:
        source = _apull(wrapped)
    try:
        async for chunk in source:
            try:
                on_chunk(_perf_counter(), chunk)
            except Exception:  # noqa: BLE001
                _chunk_failed(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        _read_failed(call, wrapped, exc)
        raise
    call.stream_ended()


class _ObservingProxy(wrapt.ObjectProxy):  # type: ignore[misc]
    """Shared hooks: feed the monitor, settle the call; never raise."""

    def __init__(self, wrapped: Any, call: StreamCall, source: Any = None, inner: Any = None) -> None:
        super().__init__(wrapped)
        self._self_call = call
        self._self_monitor = call.monitor
        # What is read for the app: the stream itself, or a filter of it (include_usage.py).
        self._self_source = wrapped if source is None else source
        # What ``for`` / ``async for`` loop over instead of iter(stream), when the
        # provider knows an equivalent one layer cheaper (Provider.iterator):
        # (the stream's class it holds for, the iterator). Not if the class changes.
        self._self_inner = (type(wrapped), inner) if source is None and inner is not None else None

    def _self_abandon(self) -> None:
        self._self_call.abandoned()

    def __del__(self) -> None:
        # The application dropped the stream without reading it to the end. The
        # GC may run this while this thread holds a lock (the metrics SDK's):
        # only hand the ending off (see ``handoff``).
        try:
            self._self_call.abandon_later()
        except Exception:  # noqa: BLE001
            pass

    def __reduce_ex__(self, protocol: Any) -> Any:  # pragma: no cover - streams don't pickle anyway
        return self.__wrapped__.__reduce_ex__(protocol)


class SyncStreamProxy(_ObservingProxy):
    """Proxy for ``openai.Stream``."""

    def __init__(self, wrapped: Any, call: StreamCall, source: Any = None, inner: Any = None) -> None:
        super().__init__(wrapped, call, source, inner)
        self._self_next = None  # built at the first next(): most streams are read by a for loop

    def __iter__(self) -> Any:
        return _sync_iterate(self, self._self_source, self._self_monitor.chunk, self._self_call, self._self_inner)

    def __next__(self) -> Any:
        step = self._self_next
        if step is None:
            step = self._self_next = _sync_step(self._self_source, self._self_monitor.chunk, self._self_call)
        return step()

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

    def __init__(self, wrapped: Any, call: StreamCall, source: Any = None, inner: Any = None) -> None:
        super().__init__(wrapped, call, source, inner)
        self._self_anext = None  # built at the first __anext__(): most streams are read by async for

    def __aiter__(self) -> Any:
        return _async_iterate(self, self._self_source, self._self_monitor.chunk, self._self_call, self._self_inner)

    def __anext__(self) -> Any:
        step = self._self_anext
        if step is None:
            step = self._self_anext = _async_step(self._self_source, self._self_monitor.chunk, self._self_call)
        return step()

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


def wrap_stream(result: Any, call: StreamCall, source: Any = None) -> Any:
    """Wrap an SDK stream; anything else is returned untouched and its span ended."""
    if hasattr(result, "__anext__"):
        return AsyncStreamProxy(result, call, source)
    if hasattr(result, "__next__"):
        return SyncStreamProxy(result, call, source)
    call.abandoned()
    return result
