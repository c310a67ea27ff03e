"""The source of a stream whose SDK sends the request at the first ``next()``.

openai's ``create`` returns once the response headers are in, so the method
wrapper runs the request under ``StreamCall.activated()`` (our span current,
SDK retries charged to the call) and settles an error it raises as
``failed``. google-genai's ``generate_content_stream`` instead returns a
generator that has sent nothing: the request, the SDK's retries and any HTTP
error all happen inside the first ``next()`` / ``__anext__()``.

``FirstPull`` is the proxy's source for such a stream (a provider with
``sends_on_first_pull``): it runs the pulls under ``activated()`` until the
first chunk arrives. An error raised before the response headers arrived (the
provider's own hook notes them on the monitor) is the request failing:
``failed``, with the facts of the HTTP error's response; after them it is the
stream breaking, left to the proxy. Once a chunk is in it reads the stream
directly (``iter()`` delegates with ``yield from``): nothing per chunk.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from ..guard import internal_error
from .call import StreamCall
from .http_facts import note_response

if TYPE_CHECKING:  # pragma: no cover
    from ..providers.base import Provider


class FirstPull:
    """Reads ``stream`` for the proxy; the pulls before the first chunk run activated."""

    __slots__ = ("_stream", "_call", "_provider", "_pending")

    def __init__(self, stream: Any, call: StreamCall, provider: "Provider") -> None:
        self._stream = stream
        self._call = call
        self._provider = provider
        self._pending = True

    def _failed(self, exc: BaseException) -> None:
        """A pull before the first chunk raised: the request failed, unless its response had begun."""
        try:
            call = self._call
            if call.monitor.headers_at is None and not self._provider.is_error_event(exc):
                note_response(call.monitor, self._provider.response_of(exc), time.perf_counter())
                call.request_failed(exc)
        except Exception:  # noqa: BLE001
            internal_error("first pull")

    # --- sync --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        stream = self._stream
        if self._pending:
            with self._call.activated():
                try:
                    first = stream.__next__()
                except StopIteration:
                    return
                except BaseException as exc:
                    self._failed(exc)
                    raise
            self._pending = False
            yield first
        yield from stream

    def __next__(self) -> Any:
        if not self._pending:
            return self._stream.__next__()
        with self._call.activated():
            try:
                chunk = self._stream.__next__()
            except StopIteration:
                raise
            except BaseException as exc:
                self._failed(exc)
                raise
        self._pending = False
        return chunk

    # --- async -------------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[Any]:
        stream = self._stream
        if self._pending:
            with self._call.activated():
                try:
                    first = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except BaseException as exc:
                    self._failed(exc)
                    raise
            self._pending = False
            yield first
        async for chunk in stream:
            yield chunk

    async def __anext__(self) -> Any:
        if not self._pending:
            return await self._stream.__anext__()
        with self._call.activated():
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                raise
            except BaseException as exc:
                self._failed(exc)
                raise
        self._pending = False
        return chunk
