"""Embedded OpenAI-, Anthropic- and Gemini-compatible SSE server that injects REAL transport faults.

Mocks at the HTTP-client layer cannot reproduce what breaks in production: a TCP
RST in the middle of a chunked frame, a FIN before the terminating chunk, a
stream that stalls. This server produces them on a real loopback socket, so the
openai SDK (and any instrumentation around it) sees exactly the exceptions it
would see against a flaky proxy.

Usage::

    with FaultServer(default_fault="reset_mid_chunk;after=3") as srv:
        client = OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
        ...

The fault for a request comes from the ``X-Fault`` header, else ``mix`` (weighted,
seeded), else ``default_fault``. See :mod:`fault_plan` for the spec grammar; all
payload building lives there, this module only does sockets and threads. A
request carrying the header of a registered planner (``register_planner``;
the tests register ``X-Script``, a client's own SSE payloads) gets that
planner's plan instead.

Anthropic clients take :attr:`FaultServer.origin` as their base URL (they add
``/v1/messages`` themselves); the Anthropic-only faults are ``error_event;type=...``
(an ``event: error`` mid-stream, ``overloaded_error`` by default) and ``overloaded``
(HTTP 529). An assistant prefill (the last message) that is a prefix of the
answer gets only the rest, like a chat "continue" request.

Chat "continue" requests (an assistant message holding a prefix of the canonical
answer, then a final user turn) get only the missing pieces. The canonical answer
depends on ``chunks``, so the continuation must use the same chunk count (same
``X-Fault`` header or server default) as the request that was cut.

Paths: the OpenAI endpoints (``base_url``) and the Gemini API's
``models/{model}:streamGenerateContent`` in its Developer API and Vertex AI
shapes (``root_url``; see :mod:`gemini_events`); :data:`ROUTES` maps each path
to the :class:`fault_plan.Api` that answers it.

Run standalone: ``python -m llm_stream_otel.demo.fault_server --fault reset_mid_chunk``.
"""

from __future__ import annotations

import argparse
import email.utils
import errno
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:  # Linux/BSD: how many written bytes the peer has not acknowledged yet
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]

from .fault_plan import (
    OPENAI,
    OPENAI_ROUTES,
    Action,
    Api,
    CutMidEvent,
    Emit,
    End,
    Fault,
    Fin,
    FaultSpecError,
    Pause,
    PlainResponse,
    Reset,
    Routes,
    answer_for,
    apply_first,
    build_plan,
    openai_error,
    parse_mix,
    resolve_settings,
)
from .anthropic_events import ANTHROPIC_ROUTES
from .gemini_events import GEMINI_ROUTES

__all__ = ["FaultServer", "Fault", "RecordedRequest", "answer_for", "add_arguments", "run_from_args", "main"]

# A planner turns a request header's value (+ path, JSON body) into a plan and the
# fault it applies, or raises FaultSpecError. Tests register one (tests/support/scripted.py:
# ``X-Script``, the client's own SSE payloads) without the server knowing it.
Planner = Callable[[str, str, Dict[str, Any]], Tuple[Any, Fault]]
_PLANNERS: Dict[str, Planner] = {}


def register_planner(header: str, planner: Planner) -> None:
    """Requests carrying ``header`` are answered by ``planner`` instead of the fault plans."""
    _PLANNERS[header.lower()] = planner


_MAX_HEAD = 64 * 1024
_IDLE_TIMEOUT = 30.0  # keep-alive connections idle longer than this are closed
_FLUSH_GRACE = 0.02  # let written bytes reach the peer before an abortive close drops them
# An abortive close discards what the peer has not acknowledged yet: before a
# RST, wait (at most this long) until the peer's kernel has every byte we wrote.
_DELIVERY_TIMEOUT = 10.0
_TIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if termios is not None else None
# Every path the server answers, and the API that speaks it.
ROUTES = Routes(OPENAI_ROUTES, ANTHROPIC_ROUTES, GEMINI_ROUTES)


def endpoint_error(path: str, status: int, message: str, code: Optional[str] = None) -> Dict[str, Any]:
    """The error body the API at ``path`` answers with (OpenAI's envelope for unknown paths)."""
    api = ROUTES.match(path)
    return api.error(status, message, code) if api is not None else openai_error(status, message, code)


def endpoint_headers(path: str, request_id: str) -> Tuple[Tuple[str, str], ...]:
    """Response headers the real API at ``path`` sends: its request id header, ``openai-version``, ..."""
    return (ROUTES.match(path) or OPENAI).response_headers(request_id)


@dataclass
class RecordedRequest:
    """One request as the server saw it (``fault`` is None for 400/404 answers)."""

    method: str
    path: str
    headers: Dict[str, str]
    body: Any
    fault: Optional[Fault]


@dataclass
class _HttpRequest:
    method: str
    path: str
    headers: Dict[str, str]
    raw_body: bytes


class _ClientGone(Exception):
    """The peer closed or reset the connection; nothing more to do on it."""


# --------------------------------------------------------------------------- HTTP/1.1 reading


class _Reader:
    """Buffered reader over a blocking socket (requests may arrive in pieces)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, OSError):
            return False
        self.buf += data
        return bool(data)

    def read_until(self, marker: bytes, limit: int = _MAX_HEAD) -> Optional[bytes]:
        while marker not in self.buf:
            if len(self.buf) > limit or not self._fill():
                return None
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_exact(self, n: int) -> Optional[bytes]:
        while len(self.buf) < n:
            if not self._fill():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _read_request(reader: _Reader) -> Optional[_HttpRequest]:
    """Read one request; None on EOF/garbage (the connection is then closed)."""
    head = reader.read_until(b"\r\n\r\n")
    if not head:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        return None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    body = _read_body(reader, headers)
    if body is None:
        return None
    return _HttpRequest(parts[0].upper(), parts[1].split("?", 1)[0], headers, body)


def _read_body(reader: _Reader, headers: Dict[str, str]) -> Optional[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked(reader)
    length = int(headers.get("content-length") or 0)
    return reader.read_exact(length) if length else b""


def _read_chunked(reader: _Reader) -> Optional[bytes]:
    body = b""
    while True:
        size_line = reader.read_until(b"\r\n")
        if size_line is None:
            return None
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            reader.read_until(b"\r\n")  # trailers end (no trailer support)
            return body
        chunk = reader.read_exact(size + 2)
        if chunk is None:
            return None
        body += chunk[:-2]


# --------------------------------------------------------------------------- HTTP/1.1 writing


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_PHRASES = {529: "Overloaded"}  # Anthropic's status, not in the IANA registry


def _head(status: int, headers: Sequence[Tuple[str, str]]) -> bytes:
    reason = _PHRASES.get(status) or HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise _ClientGone() from exc


def _unacknowledged(sock: socket.socket) -> Optional[int]:
    """Bytes still in the send queue (unsent or unacknowledged), or None where the OS cannot say."""
    if _TIOCOUTQ is None:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


def _wait_delivered(sock: socket.socket, timeout: float = _DELIVERY_TIMEOUT) -> None:
    """Until the peer's kernel holds everything written (a slow reader fills its window
    and the rest waits in our send queue, which an abortive close would throw away)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = _unacknowledged(sock)
        if pending is None:
            time.sleep(_FLUSH_GRACE)  # no way to know: the old guess
            return
        if pending == 0:
            return
        time.sleep(0.001)


def _reset(sock: socket.socket) -> None:
    """Abortive close: SO_LINGER on with timeout 0 makes close() send a TCP RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already dead: nothing left to reset
    sock.close()


def _fin(sock: socket.socket) -> None:
    """Graceful close (FIN) regardless of what the response promised."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------- the server


class FaultServer:
    """OpenAI/Gemini-compatible streaming server on a daemon thread; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default_fault: str = "none",
        mix: Optional[Dict[str, float]] = None,
        chunks: int = 8,
        chunk_delay: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.default_fault = Fault.parse(default_fault)
        self.mix: List[Tuple[Fault, float]] = [(Fault.parse(s), float(w)) for s, w in (mix or {}).items()]
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.log: Optional[Callable[[str], None]] = None  # e.g. print, for the CLI
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests: List[RecordedRequest] = []
        self._attempts: Dict[str, int] = {}
        self._conns: set = set()
        self._streaming: set = set()  # connections in the middle of an SSE body
        self._stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "FaultServer":
        """Bind (port 0 picks a free port) and serve on a daemon thread."""
        if self._thread is not None:
            return self
        self._stopping.clear()
        # A deep accept queue: load tests open 1,000 connections at once, and an
        # overflowing queue makes the kernel drop them (the client sees a reset).
        self._listener = socket.create_server((self.host, self._requested_port), backlog=max(1024, socket.SOMAXCONN))
        self._listener.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept_loop, name=f"fault-server:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, interrupt pauses and drop open connections."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_open_streams(self) -> int:
        """A server restart: reset every connection that is streaming right now, at once.

        Returns how many streams were cut. The listener stays up, so the
        clients' retries reach the "restarted" server.
        """
        with self._lock:
            conns = list(self._streaming)
            self._streaming.clear()
            for conn in conns:
                self._conns.discard(conn)
        for conn in conns:
            _reset(conn)
        return len(conns)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("FaultServer not started")
        return int(self._listener.getsockname()[1])

    @property
    def open_streams(self) -> int:
        """How many connections are in the middle of an SSE body right now."""
        with self._lock:
            return len(self._streaming)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server root, for SDKs that add the API version themselves (google-genai)."""
        return f"http://{self.host}:{self.port}/"

    @property
    def origin(self) -> str:
        """``http://host:port``: the base URL of SDKs that add ``/v1/...`` themselves (``anthropic``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> List[RecordedRequest]:
        """Recorded requests in arrival order (live list)."""
        return self._requests

    def reset(self) -> None:
        """Forget recorded requests and the per-prompt ``first=K`` attempt counters."""
        with self._lock:
            del self._requests[:]
            self._attempts.clear()

    # -- connections ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(_IDLE_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        """Serve requests on one keep-alive connection until close, fault or stop."""
        reader = _Reader(conn)
        keep = True
        served = 0
        try:
            while keep and not self._stopping.is_set():
                req = _read_request(reader)
                if req is None:
                    break
                served += 1
                if served > 1 and _wants_stale_close(req):
                    # A keep-alive connection the server had already given up on:
                    # the request meets a close, no response.
                    self._record(req, _parse_json(req.raw_body), Fault.parse("stale_keepalive"))
                    self._abort(conn, rst=False)
                    return
                keep = self._respond(conn, req) and req.headers.get("connection", "").lower() != "close"
        except (_ClientGone, OSError):
            pass  # the peer went away; a fault server must not crash on that
        finally:
            with self._lock:
                self._conns.discard(conn)
            if conn.fileno() != -1:
                conn.close()

    # -- request handling ----------------------------------------------------------

    def _respond(self, conn: socket.socket, req: _HttpRequest) -> bool:
        """Answer one request; returns False once the connection must not be reused."""
        body = _parse_json(req.raw_body)
        api = ROUTES.match(req.path)
        if api is None:
            self._record(req, body, None)
            return self._send_plain(conn, PlainResponse(404, endpoint_error(req.path, 404, f"Unknown path {req.path}",
                                                                            "not_found")), path=req.path)
        if req.method != "POST" or not isinstance(body, dict):
            self._record(req, body, None)
            msg, status = "Expected POST with a JSON object body", 400 if req.method == "POST" else 405
            return self._send_plain(conn, PlainResponse(status, endpoint_error(req.path, status, msg)), path=req.path)
        for header, planner in _PLANNERS.items():
            if req.headers.get(header):
                return self._respond_planned(conn, req, body, planner, req.headers[header])
        try:
            fault = self._choose_fault(req, body, api)
            settings = resolve_settings(fault, self.chunks, self.chunk_delay)
            info = api.request_info(req.path, body, settings.chunks)
            plan = build_plan(info, settings, uuid.uuid4().hex, int(time.time()), api)
        except FaultSpecError as exc:
            self._record(req, body, None)
            return self._send_plain(conn, PlainResponse(400, endpoint_error(req.path, 400, str(exc), "invalid_fault")),
                                    path=req.path)
        self._record(req, body, fault)
        extra = (("x-fault-applied", fault.spec),)
        if plan.plain is not None:
            return self._send_plain(conn, plan.plain, extra, req.path)
        return self._send_stream(conn, plan.actions, extra, req.path)

    def _respond_planned(
        self, conn: socket.socket, req: _HttpRequest, body: Dict[str, Any], planner: "Planner", value: str
    ) -> bool:
        """A registered planner answers this request (see ``register_planner``)."""
        try:
            plan, fault = planner(value, req.path, body)
        except FaultSpecError as exc:
            self._record(req, body, None)
            return self._send_plain(conn, PlainResponse(400, endpoint_error(req.path, 400, str(exc), "invalid_script")),
                                    path=req.path)
        self._record(req, body, fault)
        extra = (("x-fault-applied", "script:" + fault.spec),)
        if plan.plain is not None:
            return self._send_plain(conn, plan.plain, extra, req.path)
        return self._send_stream(conn, plan.actions, extra, req.path)

    def _choose_fault(self, req: _HttpRequest, body: Dict[str, Any], api: Api) -> Fault:
        """X-Fault header > weighted mix > default, then the per-prompt ``first=K`` rule."""
        header = req.headers.get("x-fault")
        if header:
            fault = Fault.parse(header)
        elif self.mix:
            with self._lock:
                fault = self._rng.choices([f for f, _ in self.mix], [w for _, w in self.mix])[0]
        else:
            fault = self.default_fault
        chunks = resolve_settings(fault, self.chunks, self.chunk_delay).chunks
        key = api.prompt_key(req.path, body, chunks)
        with self._lock:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        return apply_first(fault, attempt)

    def _record(self, req: _HttpRequest, body: Any, fault: Optional[Fault]) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(req.method, req.path, dict(req.headers), body, fault))
        if self.log is not None:
            self.log(f"{req.method} {req.path} fault={fault.spec if fault else '-'}")

    # -- response writing ----------------------------------------------------------

    def _common_headers(self, path: str) -> List[Tuple[str, str]]:
        return [
            ("date", email.utils.formatdate(usegmt=True)),
            ("server", "llm-stream-otel-fault-server"),
            *endpoint_headers(path, "req_" + uuid.uuid4().hex),
        ]

    def _send_plain(self, conn: socket.socket, resp: PlainResponse, extra: Sequence[Tuple[str, str]] = (),
                    path: str = "") -> bool:
        """JSON reply; ``truncate`` sends half the declared body then RST/FIN."""
        if resp.pause and not self._sleep(resp.pause):
            _fin(conn)
            return False
        payload = resp.html.encode("utf-8") if resp.html is not None else json.dumps(resp.body).encode("utf-8")
        own = {key for key, _ in resp.headers}
        common = [(k, v) for k, v in self._common_headers(path) if k not in own]
        headers = common + list(extra) + list(resp.headers) + [
            ("content-type", "text/html" if resp.html is not None else "application/json"),
            ("content-length", str(len(payload))),
            ("connection", "close" if resp.truncate else "keep-alive"),
        ]
        if not resp.truncate:
            _send(conn, _head(resp.status, headers) + payload)
            return True
        _send(conn, _head(resp.status, headers) + payload[: len(payload) // 2])
        self._abort(conn, rst=resp.truncate == "rst")
        return False

    def _send_stream(self, conn: socket.socket, actions: Sequence[Action], extra: Sequence[Tuple[str, str]],
                     path: str = "") -> bool:
        """200 + chunked SSE body driven by the plan; False if the connection was aborted."""
        headers = self._common_headers(path) + list(extra) + [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            ("connection", "keep-alive"),
        ]
        _send(conn, _head(200, headers))
        with self._lock:
            self._streaming.add(conn)
        try:
            for action in actions:
                if not self._run_action(conn, action):
                    return False
            return True
        finally:
            with self._lock:
                self._streaming.discard(conn)

    def _run_action(self, conn: socket.socket, action: Action) -> bool:
        """Execute one plan step; False once the connection is gone."""
        if isinstance(action, Emit):
            _send(conn, _frame(action.data))
        elif isinstance(action, Pause):
            if not self._sleep(action.seconds):
                _fin(conn)
                return False
        elif isinstance(action, End):
            _send(conn, b"0\r\n\r\n")
        elif isinstance(action, CutMidEvent):
            half = action.data[: max(1, len(action.data) // 2)]
            _send(conn, b"%x\r\n%s" % (len(action.data), half))
            self._abort(conn, rst=action.rst)
            return False
        elif isinstance(action, Reset):
            self._abort(conn, rst=True)
            return False
        elif isinstance(action, Fin):
            self._abort(conn, rst=False)
            return False
        return True

    def _abort(self, conn: socket.socket, rst: bool) -> None:
        if rst:
            _wait_delivered(conn)
        else:
            time.sleep(_FLUSH_GRACE)
        with self._lock:
            self._conns.discard(conn)
        _reset(conn) if rst else _fin(conn)

    def _sleep(self, seconds: float) -> bool:
        """Interruptible sleep; False if the server is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else True


def _wants_stale_close(req: _HttpRequest) -> bool:
    """``X-Fault: stale_keepalive``: served on a fresh connection, closed unanswered on a reused one."""
    return req.headers.get("x-fault", "").split(";", 1)[0].strip().lower() == "stale_keepalive"


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the server options to ``parser`` (reused by the project CLI)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one)")
    parser.add_argument("--fault", default="none", help="default fault spec, e.g. 'reset_mid_chunk;after=3'")
    parser.add_argument("--mix", default=None, help="weighted faults, e.g. 'reset_mid_chunk=0.2,none=0.8'")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--seed", type=int, default=None, help="seed for --mix")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run in the foreground until Ctrl-C."""
    try:
        mix = parse_mix(args.mix) if args.mix else None
        srv = FaultServer(args.host, args.port, args.fault, mix, args.chunks, args.chunk_delay, args.seed)
    except (FaultSpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not getattr(args, "quiet", False):
        srv.log = lambda line: print(line, flush=True)
    _stop_on_sigterm()
    try:
        srv.start()
    except (OSError, OverflowError) as exc:
        why = "is already in use" if getattr(exc, "errno", None) == errno.EADDRINUSE else f"cannot be used ({exc})"
        print(f"error: {args.host}:{args.port} {why}; pass --port N for another port, or 0 for a free one", file=sys.stderr)
        return 2
    with srv:
        print(f"fault server listening: {srv.base_url}", flush=True)
        print(f"Gemini API (google-genai base_url): {srv.root_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (docker stop, kill) like Ctrl-C so the server shuts down cleanly."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_stream_otel.demo.fault_server", description=__doc__.split("\n")[0])
    return run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
