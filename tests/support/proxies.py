"""Real nginx and HAProxy in front of a loopback upstream, for the proxy tests.

Each proxy runs as a foreground (non-daemon) process with its own config,
prefix, pid file and logs in a temp dir, on a free loopback port, so tests
can stop it gracefully (``nginx -s stop`` with its own -c/-p) or hard
(SIGTERM to HAProxy) while a stream is open.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

SBIN = ("/usr/sbin", "/usr/local/sbin")


def find_binary(name: str) -> Optional[str]:
    """``name`` on PATH or in the sbin dirs Debian installs it to (often not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, log: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"proxy not listening on {port}: {_tail(log)}")


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()[-2000:]
    except OSError:
        return "(no log)"


class Proxy:
    """One proxy process; ``base_url`` is the OpenAI base URL through it."""

    name = ""

    def __init__(self, binary: str, upstream_port: int) -> None:
        self.binary = binary
        self.upstream_port = upstream_port
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"llm-stream-otel-{self.name}-")
        self.log = os.path.join(self.dir, "error.log")
        self.proc: Optional[subprocess.Popen] = None
        self.stopping = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> List[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def start(self) -> "Proxy":
        self.write_config()
        out = open(os.path.join(self.dir, "stdout.log"), "wb")
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        out.close()
        _wait_listening(self.port, self.proc, os.path.join(self.dir, "stdout.log"))
        return self

    def stop(self) -> None:
        """Stop the proxy now (what it does to open connections is the proxy's)."""
        self.stopping = True
        self._signal_stop()

    def _signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.proc is not None:
            if not self.stopping:  # a test's stop() may still be shutting it down
                self.stop()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Nginx(Proxy):
    """nginx as an SSE reverse proxy: no buffering, HTTP/1.1 upstream."""

    name = "nginx"

    def __init__(self, binary: str, upstream_port: int, read_timeout: float = 10.0, keepalive_timeout: float = 75.0) -> None:
        super().__init__(binary, upstream_port)
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.conf = os.path.join(self.dir, "nginx.conf")

    def write_config(self) -> None:
        d = self.dir
        temps = "\n".join(f"    {kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {self.log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temps}
    keepalive_timeout {_ms(self.keepalive_timeout)};
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://127.0.0.1:{self.upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_connect_timeout 1s;
            proxy_read_timeout {_ms(self.read_timeout)};
        }}
    }}
}}
"""
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(conf)

    def command(self) -> List[str]:
        return [self.binary, "-e", self.log, "-p", self.dir, "-c", self.conf]

    def _signal_stop(self) -> None:
        """``nginx -s stop`` (fast shutdown) with this process's own -c/-p."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run([self.binary, "-e", self.log, "-p", self.dir, "-c", self.conf, "-s", "stop"],
                           check=True, capture_output=True, timeout=5)


class HAProxy(Proxy):
    """HAProxy in HTTP mode; it names itself in a ``via`` header (it sends no ``server``)."""

    name = "haproxy"

    def __init__(self, binary: str, upstream_port: int, server_timeout: float = 10.0) -> None:
        super().__init__(binary, upstream_port)
        self.server_timeout = server_timeout
        self.conf = os.path.join(self.dir, "haproxy.cfg")

    def write_config(self) -> None:
        conf = f"""
global
    maxconn 64
    pidfile {self.dir}/haproxy.pid
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server {_ms(self.server_timeout)}
frontend fe
    bind 127.0.0.1:{self.port}
    http-after-response set-header via "1.1 haproxy"
    default_backend be
backend be
    server up 127.0.0.1:{self.upstream_port}
"""
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(conf)

    def command(self) -> List[str]:
        return [self.binary, "-db", "-f", self.conf]


def _ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"
