"""A real loopback HTTP server that serves registered SSE bodies verbatim, cut as asked.

Each case is registered under a token (sent by the client as ``X-Case``) with
the bytes to send and how to end: ``clean`` (the chunked body's terminating
chunk), ``fin`` (close the socket mid-body) or ``rst`` (abortive close: a TCP
RST). Tests of the real corpus only; the product's fault server generates its
own bodies.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from typing import Dict, Tuple

ENDINGS = ("clean", "fin", "rst")


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def _read_request(self) -> Dict[str, str]:
        sock = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return {}
            data += piece
        head, _, rest = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
        return headers

    def handle(self) -> None:
        sock = self.request
        headers = self._read_request()
        body, ending = self.server.cases.get(headers.get("x-case", ""), (b"", "clean"))
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        chunk = (b"%x\r\n" % len(body) + body + b"\r\n") if body else b""
        try:
            if ending == "clean":
                sock.sendall(head + chunk + b"0\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                return
            sock.sendall(head + chunk)
            if ending == "rst":
                _reset_after_delivery(sock)
            else:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


_SIOCOUTQ = 0x5411  # Linux: bytes in the send queue not yet acknowledged by the peer


def _reset_after_delivery(sock: socket.socket) -> None:
    """RST once the peer has everything: a reset discards unsent (and unread) data."""
    import fcntl

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        if pending == 0:
            break
        time.sleep(0.002)
    time.sleep(0.01)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # now: socketserver's own shutdown(SHUT_WR) would send a FIN first


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cases: Dict[str, Tuple[bytes, str]] = {}


class ReplayServer:
    """``with ReplayServer() as srv: srv.add(token, body, ending)``; ``srv.base_url``."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def add(self, token: str, body: bytes, ending: str = "clean") -> None:
        assert ending in ENDINGS, ending
        self._server.cases[token] = (body, ending)

    def __enter__(self) -> "ReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
