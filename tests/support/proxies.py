"""Real nginx, HAProxy and squid in front of a loopback upstream, for the proxy tests.

Each proxy runs as a foreground (non-daemon) process with its own config,
prefix, pid file and logs in a temp dir, on a free loopback port, so tests
can stop it gracefully (``nginx -s stop`` with its own -c/-p) or hard
(SIGTERM to HAProxy and squid) while a stream is open, and start it again
on the same address (:meth:`Proxy.restart`). ``host`` may be any 127.0.0.0/8
address, so that each proxy is its own ``server.address``.
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_listening(host: str, port: int, proc: subprocess.Popen, log: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
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

    def __init__(self, binary: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.upstream_port = upstream_port
        self.host = host
        self.port = free_port(host)
        self.dir = tempfile.mkdtemp(prefix=f"llm-stream-otel-{self.name}-")
        self.log = os.path.join(self.dir, "error.log")
        self.proc: Optional[subprocess.Popen] = None
        self.stopping = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> List[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def start(self) -> "Proxy":
        self.write_config()
        out = open(os.path.join(self.dir, "stdout.log"), "wb")
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        out.close()
        _wait_listening(self.host, self.port, self.proc, os.path.join(self.dir, "stdout.log"))
        self.stopping = False
        return self

    def restart(self) -> "Proxy":
        """Stop now (cutting what is open), wait for the process to exit, start again on the same address."""
        self.stop()
        self.wait_stopped()
        return self.start()

    def wait_stopped(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            self.proc.wait(timeout)

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
                self.wait_stopped()
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

    def __init__(self, binary: str, upstream_port: int, read_timeout: float = 10.0, keepalive_timeout: float = 75.0,
                 host: str = "127.0.0.1", close_reused: bool = False) -> None:
        super().__init__(binary, upstream_port, host)
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        #: Close a reused keep-alive connection without answering (``return 444``
        #: from the second request on): the wire signature of a pooled connection
        #: the proxy dropped just as the client sent on it.
        self.close_reused = close_reused
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
        listen {self.host}:{self.port};
        location / {{{_CLOSE_REUSED if self.close_reused else ""}
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

    def __init__(self, binary: str, upstream_port: int, server_timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        super().__init__(binary, upstream_port, host)
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
    bind {self.host}:{self.port}
    http-after-response set-header via "1.1 haproxy"
    default_backend be
backend be
    server up 127.0.0.1:{self.upstream_port}
"""
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(conf)

    def command(self) -> List[str]:
        return [self.binary, "-db", "-f", self.conf]


class Squid(Proxy):
    """squid as a reverse proxy (accelerator) with caching off; it names itself in ``via``.

    ``read_timeout`` is squid's own: how long it waits for a byte from the
    upstream once the response has begun. ``shutdown_lifetime 0`` makes a
    stop (SIGTERM) close open client connections at once, not after 30 s.
    Run as root, squid drops to the ``proxy`` user: its dir is world-writable.
    """

    name = "squid"

    def __init__(self, binary: str, upstream_port: int, read_timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        super().__init__(binary, upstream_port, host)
        self.read_timeout = read_timeout
        self.conf = os.path.join(self.dir, "squid.conf")
        os.chmod(self.dir, 0o777)

    def write_config(self) -> None:
        d = self.dir
        conf = f"""
http_port {self.host}:{self.port} accel defaultsite=upstream no-vhost
cache_peer 127.0.0.1 parent {self.upstream_port} 0 no-query originserver name=up
cache_peer_access up allow all
http_access allow all
cache deny all
cache_mem 8 MB
visible_hostname llm-stream-otel-test
pid_filename {d}/squid.pid
cache_log {self.log}
access_log none
cache_store_log none
coredump_dir {d}
read_timeout {max(1, int(round(self.read_timeout)))} seconds
shutdown_lifetime 0 seconds
"""
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(conf)

    def command(self) -> List[str]:
        return [self.binary, "-N", "-f", self.conf]


_CLOSE_REUSED = """
            if ($connection_requests != 1) { return 444; }"""


def _ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"
