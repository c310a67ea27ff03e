"""What the HTTP response of a stream says about why it might be cut.

Read once per stream, when ``create`` returns (the response headers have
arrived) or fails with an HTTP status: status code, protocol version, the
intermediary named by ``via`` / ``server``, the provider's request id and an
unexpected content type. Pure functions over a response-like object (httpx
and httpx2 ``Response`` alike: ``status_code``, ``http_version``,
``headers``); nothing here runs per chunk.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from .. import semconv as t
from .connections import connection_facts

# Product tokens (lower case, as they appear at the start of `server` or of a
# `via` entry's pseudonym) -> the bounded value of llm.stream.http.intermediary.
_KNOWN_INTERMEDIARIES = {
    "nginx": t.INTERMEDIARY_NGINX,
    "openresty": t.INTERMEDIARY_NGINX,
    "haproxy": t.INTERMEDIARY_HAPROXY,
    "envoy": t.INTERMEDIARY_ENVOY,
    "istio-envoy": t.INTERMEDIARY_ENVOY,
    "cloudflare": t.INTERMEDIARY_CLOUDFLARE,
    "squid": t.INTERMEDIARY_SQUID,
    "varnish": t.INTERMEDIARY_VARNISH,
    "apache": t.INTERMEDIARY_APACHE,
    "httpd": t.INTERMEDIARY_APACHE,
    "traefik": t.INTERMEDIARY_TRAEFIK,
    "caddy": t.INTERMEDIARY_CADDY,
    "awselb": t.INTERMEDIARY_AWS_ELB,
    "kong": t.INTERMEDIARY_KONG,
    "google frontend": t.INTERMEDIARY_GOOGLE,
    "gfe": t.INTERMEDIARY_GOOGLE,
    "akamaighost": t.INTERMEDIARY_AKAMAI,
}
_TOKEN = re.compile(r"[a-z][a-z0-9._ -]*?(?=[/(;,]|$|\s\d)")
_SSE = "text/event-stream"
_MAX_HEADER_VALUE = 128


_WANTED = ("server", "via", "x-request-id", "request-id", "content-type")
_WANTED_RAW = {name.encode(): name for name in _WANTED}


def _header(headers: Any, name: str) -> Optional[str]:
    try:
        value = headers.get(name)
    except Exception:  # noqa: BLE001 - an odd headers object: no value
        return None
    return str(value)[:_MAX_HEADER_VALUE] if value else None


def _wanted_headers(headers: Any) -> Dict[str, Optional[str]]:
    """The headers we read, as ``headers.get(name)`` gives them (repeats joined by ", ").

    One pass over the headers: each ``get`` of httpx / httpx2 ``Headers``
    scans every header in Python (and the first one decodes them all to pick
    an encoding), so four of them cost five scans. The pass reads the
    lower-cased keys ``Headers`` keeps (its ``_list`` triples) where they are,
    else the public ``raw`` pairs. An ASCII value reads the same in any encoding ``Headers`` may pick;
    any other is decoded with the one it picks. Any other headers object: one
    ``get`` per name."""
    triples = getattr(headers, "_list", None)
    if type(triples) is not list or (triples and not (type(triples[0]) is tuple and len(triples[0]) == 3)):
        try:
            raw = headers.raw
        except Exception:  # noqa: BLE001 - not httpx-style: look each one up
            raw = None
        if type(raw) is not list:
            return {name: _header(headers, name) for name in _WANTED}
        triples = [(key, key.lower(), value) for key, value in raw]
    out: Dict[str, Optional[str]] = dict.fromkeys(_WANTED)
    odd = False  # a value to cut or an empty one (None, as ``_header`` gives it)
    for _raw, key, value in triples:
        name = _WANTED_RAW.get(key)
        if name is not None:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                text = value.decode(headers.encoding)
            previous = out[name]
            text = text if previous is None else previous + ", " + text  # repeats joined, as get() joins them
            out[name] = text
            if not text or len(text) > _MAX_HEADER_VALUE:
                odd = True
    if odd:
        for name, text in out.items():
            if text is not None:
                out[name] = text[:_MAX_HEADER_VALUE] or None
    return out


def _product(text: str) -> Optional[str]:
    """The known intermediary a `server` value or `via` pseudonym names, if any."""
    lowered = text.strip().lower()
    if lowered in _KNOWN_INTERMEDIARIES:
        return _KNOWN_INTERMEDIARIES[lowered]
    match = _TOKEN.match(lowered)
    token = match.group(0).strip() if match else lowered.split("/", 1)[0].strip()
    return _KNOWN_INTERMEDIARIES.get(token)


_SEEN_INTERMEDIARIES: Dict[Any, Optional[str]] = {}  # (server, via) -> its answer: the same few pairs repeat
_SEEN_LIMIT = 256


def intermediary(server: Optional[str], via: Optional[str]) -> Optional[str]:
    """``via`` entries (``1.1 haproxy``, ``1.1 abc.cloudfront.net (CloudFront)``)
    first, then ``server``; a known product, else ``_OTHER``; None without either.
    Each (server, via) pair is parsed once (about 10,000 instructions a stream saved)."""
    if not server and not via:
        return None
    key = (server, via)
    found = _SEEN_INTERMEDIARIES.get(key, _SEEN_INTERMEDIARIES)
    if found is not _SEEN_INTERMEDIARIES:
        return found
    found = _parse_intermediary(server, via)
    if len(_SEEN_INTERMEDIARIES) >= _SEEN_LIMIT:
        _SEEN_INTERMEDIARIES.clear()
    _SEEN_INTERMEDIARIES[key] = found
    return found


def _parse_intermediary(server: Optional[str], via: Optional[str]) -> Optional[str]:
    for entry in (via or "").split(","):
        parts = entry.strip().split(None, 1)  # "<protocol> <pseudonym> [comment]"
        if len(parts) == 2:
            found = _product(parts[1]) or (_product(parts[1].split("(", 1)[-1]) if "(" in parts[1] else None)
            if found:
                return found
    if server:
        found = _product(server)
        if found:
            return found
    return t.ERROR_TYPE_OTHER


_VERSIONS: Dict[Any, Optional[str]] = {}  # the few values seen, each parsed once


def protocol_version(http_version: Any) -> Optional[str]:
    """``HTTP/1.1`` -> ``1.1``, ``HTTP/2`` -> ``2`` (semconv ``network.protocol.version``)."""
    if not http_version:
        return None
    kind = type(http_version)
    if kind is str or kind is bytes:
        found = _VERSIONS.get(http_version, _VERSIONS)
        if found is not _VERSIONS:
            return found
    text = http_version.decode("ascii", "replace") if isinstance(http_version, bytes) else str(http_version)
    version = text.upper().replace("HTTP/", "").strip() or None
    if (kind is str or kind is bytes) and len(_VERSIONS) < 16:
        _VERSIONS[http_version] = version
    return version


def response_facts(response: Any) -> Dict[str, Any]:
    """Span attributes of one HTTP response (empty for anything that is not one)."""
    facts: Dict[str, Any] = {}
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        facts[t.HTTP_RESPONSE_STATUS_CODE] = status
    version = protocol_version(getattr(response, "http_version", None))
    if version:
        facts[t.NETWORK_PROTOCOL_VERSION] = version
    headers = getattr(response, "headers", None)
    if headers is None:
        return facts
    wanted = _wanted_headers(headers)
    found = intermediary(wanted["server"], wanted["via"])
    if found:
        facts[t.HTTP_INTERMEDIARY] = found
    request_id = wanted["x-request-id"] or wanted["request-id"]  # openai, anthropic
    if request_id:
        facts[t.HTTP_REQUEST_ID] = request_id
    content_type = wanted["content-type"]
    if content_type and not content_type.lower().startswith(_SSE):
        facts[t.HTTP_CONTENT_TYPE] = content_type.split(";", 1)[0].strip()
    return facts


def note_response(monitor: Any, response: Any, now: float) -> None:
    """The response headers arrived at ``now``: keep their facts on the monitor.

    Called once per stream by the method wrapper (``create`` returns once the
    headers are in; on an HTTP error, the ``APIStatusError`` carries them).
    """
    if response is None or monitor.headers_at is not None:
        return
    monitor.headers_at = now
    facts = response_facts(response)
    facts.update(connection_facts(monitor, response))
    monitor.http = facts
