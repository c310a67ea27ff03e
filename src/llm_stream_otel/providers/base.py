"""The provider contract: what an LLM SDK supplies to the provider-neutral core.

The core (``stream/``, ``retries/``, ``metrics/``) knows streams, outcomes,
retries and recording; it never imports an SDK. A provider knows one SDK:

- ``patches(telemetry)``: what to wrap (owner class, attribute, wrapt
  wrapper). Most methods use the core's ``stream.wrapper.method_wrapper``;
  a provider adds its own wrappers for helpers (SDK retries, stream helpers).
- ``is_stream(kind, kwargs)``: does this call return a stream we observe?
- ``describe(kind, instance, kwargs)``: the request as low-cardinality
  attributes (``RequestInfo``); never the prompt.
- ``reader(kind)``: reads each chunk's facts into the ``StreamMonitor``
  (finish reasons, the terminator, usage, ids, opted-in text).
- ``notice_test(kind)``: which leading chunks are service notifications
  (Responses' ``response.created``, Anthropic's ``message_start``), read and
  counted but not timed: time to first chunk and the gaps start at the first
  generated chunk. None (the default): every chunk is generated.
- ``finish_outcomes``: finish/stop reason -> outcome (unknown: completed).
- ``is_error_event(exc)``: does this SDK exception carry an error event the
  server sent inside the stream (-> ``truncated/error_event``)?
- ``fingerprint(kind, base_url, kwargs)``: a bounded-cost digest that
  recognises a repeat of the same request (application retries), or None;
  by default the core's walk of the keyword arguments.
- ``retry_client(instance)``: the client object that scopes untraced retries.
- ``response_of(carrier)``: the HTTP response of a returned stream or an
  HTTP status error (root-cause facts), or None.
- ``watch(result)``: an optional observer of the wire (e.g. openai's
  ``[DONE]``) with ``observe(monitor)`` / ``release()``, or None.
- ``prepare(settings, kind, kwargs)`` / ``source(result, monitor)``: an
  optional rewrite of the request (openai's opt-in ``include_usage``) and
  the filter that hides its effect from the app.
- ``sends_on_first_pull``: the SDK's method returns a stream that sends its
  request at the first ``next()`` (google-genai), not before it returns
  (openai). The core then runs the pulls before the first chunk activated
  (``stream.first_pull``) and settles an error raised before the response
  headers as ``failed``; the provider notes the headers on the monitor
  (``stream.http_facts.note_response``) from its own hook on the SDK's HTTP
  layer, where it also counts the SDK's retries (``StreamCall.sdk_retry``).
- ``iterator(result)``: optionally, an iterator that yields exactly what
  iterating ``result`` yields, one layer cheaper per chunk (openai: the
  stream's own ``_iterator``, which its ``__iter__`` only re-yields), or None.

For the resilient helper (``resilient.py``), which takes the app's bound
streaming method: ``kind_of(method)`` (is this bound SDK method one of
ours, and which kind; ``owns`` checks the ``sdk_module``),
``stream_request(kwargs)`` (the arguments that make it stream),
``http_status(exc)`` (the HTTP status of a failed request, for what is
worth retrying), ``delta_text(kind, chunk)`` (the generated text of a chunk,
first choice), ``continuation(kind, kwargs, partial, prompt)`` (the request
that continues ``partial``, and the text the model will repeat at its
start) and ``without_prefix(kind, chunk, prefix)``.

A hook may be a plain function bound on the instance (``self.reader =
reader_for``): the per-stream path then saves a frame per hook.
Every hook runs guarded by the core: a provider's bug is counted as ours
and never reaches the application.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .. import semconv as t
from ..retries.fingerprint import request_fingerprint

# (owner class, attribute name, wrapt wrapper)
Patch = Tuple[type, str, Callable[..., Any]]
ChunkReader = Callable[[Any, Any], None]


@dataclass
class RequestInfo:
    """An outgoing streaming request, as the span and metrics see it."""

    kind: str
    operation: str
    model: Optional[str]
    server_address: Optional[str]
    server_port: Optional[int]
    base_url: str
    span_attributes: Dict[str, Any] = field(default_factory=dict)


_DEFAULT_PORTS = {"http": 80, "https": 443}


# id(url) -> (url, its parts): an httpx / httpx2 ``URL`` is immutable, and a
# client keeps the same one, whose properties (host, port, path) re-parse it.
_server_cache: Dict[int, Tuple[Any, Tuple[Optional[str], Optional[int], str]]] = {}
_SERVER_CACHE_SIZE = 256


def server_parts(url: Any) -> Tuple[Optional[str], Optional[int], str]:
    """Host, port and credential-free base URL of an ``httpx.URL``-like object."""
    if url is None:
        return None, None, ""
    cached = _server_cache.get(id(url))
    if cached is not None and cached[0] is url:
        return cached[1]
    parts = _server_parts(url)
    if type(url).__module__.split(".", 1)[0] in ("httpx", "httpx2"):
        if len(_server_cache) >= _SERVER_CACHE_SIZE:
            _server_cache.clear()
        _server_cache[id(url)] = (url, parts)
    return parts


def _server_parts(url: Any) -> Tuple[Optional[str], Optional[int], str]:
    host = getattr(url, "host", None) or None
    scheme = getattr(url, "scheme", "") or ""
    port = getattr(url, "port", None) or _DEFAULT_PORTS.get(scheme)
    path = getattr(url, "path", "") or ""
    # Built from parts on purpose: str(url) would keep any user:password@.
    base = f"{scheme}://{host}:{port}{path}" if host else ""
    return host, port, base


def request_attributes(
    operation: str, provider: str, model: Optional[str], host: Optional[str], port: Optional[int]
) -> Dict[str, Any]:
    """The span attributes every provider's request has (GenAI semconv), before its own parameters."""
    attributes: Dict[str, Any] = {
        t.GEN_AI_OPERATION_NAME: operation,
        t.GEN_AI_PROVIDER_NAME: provider,
        t.GEN_AI_REQUEST_STREAM: True,
    }
    if model:
        attributes[t.GEN_AI_REQUEST_MODEL] = model
    if host:
        attributes[t.SERVER_ADDRESS] = host
    if port:
        attributes[t.SERVER_PORT] = port
    return attributes


def is_number(value: Any) -> bool:
    """A sampling parameter worth an attribute: an int or float, not a bool (nor a NOT_GIVEN sentinel)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Provider:
    """Defaults for the optional hooks; a provider overrides what its SDK needs."""

    #: registry key and ``gen_ai.provider.name`` default, e.g. ``"openai"``
    name: str = ""
    #: the distribution it instruments, e.g. ``"openai >= 1.0.0"``
    requirement: str = ""
    finish_outcomes: Mapping[str, str] = {}
    #: how the wire terminator is observed with the installed SDK (``doctor``), or None
    wire_strategy: Optional[str] = None
    #: does the returned stream send its request at the first ``next()``? (see the module docstring)
    sends_on_first_pull: bool = False
    #: the SDK's top-level module, e.g. ``"openai"`` (``owns``)
    sdk_module: str = ""

    def available(self) -> bool:
        """Is the SDK importable here?"""
        return False

    def patches(self, telemetry: Any) -> List[Patch]:
        return []

    def is_stream(self, kind: str, kwargs: Mapping[str, Any]) -> bool:
        return True

    def describe(self, kind: str, instance: Any, kwargs: Mapping[str, Any]) -> RequestInfo:
        raise NotImplementedError

    def reader(self, kind: str) -> ChunkReader:
        raise NotImplementedError

    def notice_test(self, kind: str) -> Optional[Callable[[Any], bool]]:
        return None

    def is_error_event(self, exc: BaseException) -> bool:
        return False

    # A plain function, not a method: one Python frame less per stream.
    fingerprint = staticmethod(request_fingerprint)

    def retry_client(self, instance: Any) -> Any:
        return getattr(instance, "_client", instance)

    def response_of(self, carrier: Any) -> Any:
        return getattr(carrier, "response", None)

    def watch(self, result: Any) -> Any:
        return None

    def prepare(self, settings: Any, kind: str, kwargs: Mapping[str, Any]) -> Optional[dict]:
        return None

    def source(self, result: Any, monitor: Any) -> Any:
        return None

    # --- the resilient helper ---------------------------------------------------
    def owns(self, method: Any) -> bool:
        """Is ``method`` bound to an object of this SDK (``sdk_module`` or below)?"""
        owner = getattr(method, "__self__", None)
        module = type(owner).__module__ if owner is not None else ""
        return bool(self.sdk_module) and (module == self.sdk_module or module.startswith(self.sdk_module + "."))

    def kind_of(self, method: Any) -> Optional[str]:
        """The kind (for ``reader``) of a bound streaming method of this SDK, or None: not ours."""
        return None

    def stream_request(self, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
        """The arguments that make the method return a stream."""
        return dict(kwargs)

    def http_status(self, exc: BaseException) -> Optional[int]:
        """The HTTP status of an SDK exception for an error response, else None."""
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) else None

    def delta_text(self, kind: str, chunk: Any) -> Optional[str]:
        return None

    def continuation(self, kind: str, kwargs: Mapping[str, Any], partial: str, prompt: str) -> Tuple[dict, str]:
        raise NotImplementedError

    def without_prefix(self, kind: str, chunk: Any, prefix: str) -> Any:
        return chunk


    # --- the hot path -------------------------------------------------------------
    def iterator(self, result: Any) -> Any:
        return None


def kind_by_owner(method: Any, targets: Any, find: Callable[[str, str], Optional[type]]) -> Optional[str]:
    """The kind of a bound SDK method, by its instance's class among ``targets``' (module, class, kind, ...)."""
    instance = getattr(method, "__self__", None)
    for module_name, class_name, kind, *_ in targets:
        owner = find(module_name, class_name)
        if owner is not None and isinstance(instance, owner):
            return kind
    return None
