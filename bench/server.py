"""A lean loopback server for the overhead benchmark: OpenAI-style chat SSE, as fast as it can.

It answers ``POST /v1/chat/completions`` (streaming) with ``N`` content chunks,
one finish chunk (``finish_reason: stop``), a usage chunk when the request asks
for ``stream_options.include_usage``, then ``data: [DONE]``. ``N`` comes from the
``x-bench-chunks`` request header (default 20,000). A non-streaming request
(``"stream": false``) gets one JSON chat completion.

Every body is built once per chunk count, cached as bytes and sent with a few
``sendall`` calls in large HTTP/1.1 chunked-encoding frames, so the server
costs next to nothing per chunk and is never the bottleneck; the client (the
real ``openai`` SDK) still parses one SSE event and builds one pydantic chunk
per content chunk. Connections are keep-alive (one thread each) so that the
per-stream fixed-cost measurement is not dominated by TCP set-up.

Run it in its own process (its CPU must not be counted by callgrind in the
measured process)::

    python bench/server.py [--port 0]      # prints "PORT <n>" then serves until stdin closes
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from typing import Dict, Optional, Tuple

DEFAULT_CHUNKS = 20_000
FRAME = 256 * 1024  # bytes per HTTP chunked frame
MODEL = "gpt-bench"
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

_cache: Dict[Tuple[int, bool], bytes] = {}
_cache_lock = threading.Lock()


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _envelope(choices: list, usage: bool) -> dict:
    env = {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "service_tier": "default",
        "choices": choices,
    }
    if usage:
        env["usage"] = None
    return env


def sse_body(n_chunks: int, usage: bool) -> bytes:
    """The whole SSE body for ``n_chunks`` content chunks (cached)."""
    key = (n_chunks, usage)
    with _cache_lock:
        body = _cache.get(key)
    if body is not None:
        return body
    parts = []
    for i in range(n_chunks):
        delta = {"content": _WORDS[i % len(_WORDS)] + " "}
        if i == 0:
            delta = {"role": "assistant", "content": "Lorem ", "refusal": None}
        parts.append(_event(_envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}], usage)))
    parts.append(_event(_envelope([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], usage)))
    if usage:
        env = _envelope([], usage)
        env["usage"] = {
            "prompt_tokens": 12,
            "completion_tokens": n_chunks,
            "total_tokens": 12 + n_chunks,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        parts.append(_event(env))
    parts.append(b"data: [DONE]\n\n")
    raw = b"".join(parts)
    framed = []
    for start in range(0, len(raw), FRAME):
        piece = raw[start : start + FRAME]
        framed.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    framed.append(b"0\r\n\r\n")
    body = b"".join(framed)
    with _cache_lock:
        _cache[key] = body
    return body


_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req_bench\r\n"
    b"connection: keep-alive\r\n\r\n"
)


def completion_response() -> bytes:
    """A non-streaming chat completion (cached: the same bytes every time)."""
    body = _cache.get((-1, False))
    if body is None:
        payload = json.dumps(
            {
                "id": "chatcmpl-bench0123456789",
                "object": "chat.completion",
                "created": 1700000000,
                "model": MODEL,
                "system_fingerprint": "fp_bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Lorem ipsum dolor.", "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            },
            separators=(",", ":"),
        ).encode()
        body = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_bench\r\nconnection: keep-alive\r\n\r\n%s" % (len(payload), payload)
        )
        with _cache_lock:
            _cache[(-1, False)] = body
    return body


def _not_found() -> bytes:
    body = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
    return (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: keep-alive\r\n\r\n%s" % (len(body), body)
    )


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        self.buf += data
        return bool(data)

    def read_request(self) -> Optional[Tuple[str, Dict[str, str], bytes]]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) < 2:
            return None
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(self.buf) < length:
            if not self._fill():
                return None
        body, self.buf = self.buf[:length], self.buf[length:]
        return parts[1], headers, body


def _serve(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = _Conn(sock)
    try:
        while True:
            request = conn.read_request()
            if request is None:
                return
            path, headers, raw = request
            if not path.split("?", 1)[0].endswith("/chat/completions"):
                sock.sendall(_not_found())
                continue
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            if body.get("stream") is not True:
                sock.sendall(completion_response())
                continue
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            n_chunks = int(headers.get("x-bench-chunks") or DEFAULT_CHUNKS)
            payload = sse_body(n_chunks, usage)
            sock.sendall(_HEAD)
            view = memoryview(payload)
            for start in range(0, len(view), 1 << 20):
                sock.sendall(view[start : start + (1 << 20)])
    except OSError:
        return
    finally:
        try:
            sock.close()
        except OSError:
            pass


class BenchServer:
    """Accept loop on 127.0.0.1 in a daemon thread; one thread per connection."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, name="bench-accept", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "BenchServer":
        self.thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(sock,), daemon=True).start()

    def close(self) -> None:
        try:
            self.listener.close()
        except OSError:
            pass


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prebuild", type=int, action="append", default=[], help="chunk counts to build up front")
    args = parser.parse_args(argv)
    for n in args.prebuild:
        sse_body(n, True)
        sse_body(n, False)
    server = BenchServer(args.port).start()
    sys.stdout.write(f"PORT {server.port}\n")
    sys.stdout.flush()
    # Serve until the parent closes our stdin (or kills us).
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
