"""Real proxies cutting real streams, for the proxies-to-diagnose e2e test.

``python proxy_traffic.py PORT OUT.json``: serves /metrics on PORT, then,
through the real openai client (instrumented) to the real FaultServer
behind real nginx, HAProxy and squid, runs each scenario of
:data:`SCENARIOS` in turn, several streams each, every one on its own proxy
listener at its own loopback address (127.0.0.N), so that each is its own
``server.address`` for ``diagnose``. It writes every stream's span attributes
by scenario to OUT.json, prints ``holding:`` and keeps /metrics up until
killed.

``python proxy_traffic.py --table OUT.json`` prints the "scenario ->
attribute values" table of a finished run (markdown).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for support/

import openai  # noqa: E402

from llm_stream_otel import semconv as t  # noqa: E402
from llm_stream_otel.demo.fault_server import FaultServer  # noqa: E402
from llm_stream_otel.demo.otel_setup import setup  # noqa: E402
from llm_stream_otel.instrumentor import LLMStreamInstrumentor  # noqa: E402
from support.proxies import HAProxy, Nginx, Proxy, Squid, find_binary, free_port  # noqa: E402

#: Streams per scenario: above diagnose's MIN_BROKEN (5), and a restart's
#: burst stays >= BURST_MIN (3) even if the cuts straddle two scrapes.
STREAMS = 6
LONG_STREAM = "none;chunks=60;delay=0.03"  # 1.8 s of chunks: open when the proxy goes
STALL = "stall;after=2;seconds=3"  # silent for longer than every proxy timeout below


@dataclass
class Run:
    """What one scenario has to work with."""

    server: FaultServer
    proxy: Proxy
    pool: ThreadPoolExecutor
    label: str
    #: set once every stream of :meth:`during` has its first chunk
    all_open: threading.Event = field(default_factory=threading.Event)
    _open: int = 0
    _expected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proxy.base_url, api_key="sk-test-SECRET", max_retries=0, **kw)

    def streams(self, fault: str, n: int = STREAMS, timeout: Optional[float] = None, retries: int = 0,
                warm: bool = False) -> List[Optional[str]]:
        """``n`` concurrent streams, each on its own client; the exception each ended with (None: completed)."""
        return list(self.pool.map(lambda i: self._one(fault, f"{self.label} {i} {time.time()}", timeout, retries, warm),
                                  range(n)))

    def _one(self, fault: str, prompt: str, timeout: Optional[float], retries: int, warm: bool) -> Optional[str]:
        kw = {"timeout": timeout} if timeout else {}
        with self.client(**kw) as c:
            if warm:  # a non-streaming call leaves its connection in the pool
                c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "warm"}])
            error = None
            for attempt in range(retries + 1):  # the app's own retry loop: same request, after a pause
                try:
                    stream = c.chat.completions.create(model="gpt-test", stream=True, extra_headers={"X-Fault": fault},
                                                       messages=[{"role": "user", "content": prompt}])
                    for i, _chunk in enumerate(stream):
                        if i == 0 and attempt == 0:
                            self._opened()
                    return None
                except openai.APIError as exc:
                    error = type(exc).__name__
                    time.sleep(0.4 * 2 ** attempt)
            return error

    def _opened(self) -> None:
        with self._lock:
            self._open += 1
            if self._open == self._expected:
                self.all_open.set()

    def during(self, fault: str, action: Callable[[], Any], after: float = 0.2, **kw: Any) -> List[Optional[str]]:
        """Streams that are all open (each has a chunk) when ``action()`` runs, ``after`` s later."""
        self._expected = kw.get("n", STREAMS)

        def act() -> None:
            if not self.all_open.wait(10):
                raise RuntimeError(f"{self.label}: only {self._open} of {self._expected} streams opened")
            time.sleep(after)
            action()

        actor = threading.Thread(target=act, name="action")
        actor.start()
        try:
            return self.streams(fault, **kw)
        finally:
            actor.join()


def _silent_upstream() -> int:
    """A port that accepts (the kernel's backlog) and never answers: the proxy times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    _KEEP.append(sock)
    return sock.getsockname()[1]


_KEEP: List[socket.socket] = []


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    proxy: str  # nginx | haproxy | squid
    settings: Dict[str, Any]
    drive: Callable[[Run], List[Optional[str]]]
    upstream: Optional[Callable[[], int]] = None  # default: the fault server


SCENARIOS: List[Scenario] = [
    Scenario("nginx_read_timeout", "proxy read timeout (nginx proxy_read_timeout 1.5s)", "nginx", {"read_timeout": 1.5},
             lambda r: r.streams(STALL)),
    Scenario("haproxy_server_timeout", "proxy read timeout (HAProxy timeout server 1.5s)", "haproxy", {"server_timeout": 1.5},
             lambda r: r.streams(STALL)),
    # squid checks its timeouts once a second: `read_timeout 4 seconds` cuts after 3.95-4.96 s.
    Scenario("squid_read_timeout", "proxy read timeout (squid read_timeout 4s)", "squid", {"read_timeout": 4},
             lambda r: r.streams("stall;after=2;seconds=7")),
    Scenario("nginx_restart", "proxy restarted mid-stream (nginx -s stop, start), app retries", "nginx", {},
             lambda r: r.during(LONG_STREAM, r.proxy.restart, retries=2)),
    Scenario("haproxy_stop", "proxy stopped mid-stream (HAProxy hard stop)", "haproxy", {},
             lambda r: r.during(LONG_STREAM, r.proxy.stop)),
    Scenario("squid_stop", "proxy stopped mid-stream (squid SIGTERM)", "squid", {},
             lambda r: r.during(LONG_STREAM, r.proxy.stop)),
    Scenario("upstream_killed", "upstream killed behind the proxy (nginx)", "nginx", {},
             lambda r: r.during(LONG_STREAM, r.server.cut_open_streams)),
    Scenario("nginx_502", "502 before the body (nginx, upstream down)", "nginx", {},
             lambda r: r.streams("none"), upstream=free_port),
    Scenario("nginx_504", "504 before the body (nginx, upstream silent, proxy_read_timeout 1s)", "nginx", {"read_timeout": 1},
             lambda r: r.streams("none"), upstream=_silent_upstream),
    Scenario("client_read_timeout", "client read timeout 0.4s (through nginx)", "nginx", {"read_timeout": 5},
             lambda r: r.streams("stall;after=2;seconds=1.5", timeout=0.4)),
    Scenario("stale_pooled", "stale pooled connection (nginx closes a reused one unanswered)", "nginx", {"close_reused": True},
             lambda r: r.streams("none", warm=True)),
    Scenario("pooled_closed_idle", "pooled connection closed idle by nginx (keepalive_timeout 0.5s; control)", "nginx",
             {"keepalive_timeout": 0.5}, lambda r: _after_pause(r)),
]


def _after_pause(r: Run) -> List[Optional[str]]:
    """Warm a connection, let nginx close it idle (a FIN), then stream: httpcore sees it and opens a new one."""
    def one(i: int) -> Optional[str]:
        with r.client() as c:
            c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "warm"}])
            time.sleep(1.0)
            for _chunk in c.chat.completions.create(model="gpt-test", stream=True, extra_headers={"X-Fault": "none"},
                                                    messages=[{"role": "user", "content": f"control {i}"}]):
                pass
        return None
    return list(r.pool.map(one, range(3)))


PROXIES = {"nginx": Nginx, "haproxy": HAProxy, "squid": Squid}


def host_of(index: int) -> str:
    return f"127.0.0.{11 + index}"


def main(port: int, out: str) -> None:
    telemetry = setup("diagnose-proxies-e2e", port, console=False)
    LLMStreamInstrumentor().instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                                       stall_threshold=0.3)
    binaries = {name: find_binary(name) for name in PROXIES}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        raise SystemExit(f"missing proxies: {', '.join(missing)}")
    results: Dict[str, Any] = {}
    with FaultServer(chunks=8, chunk_delay=0.02) as server, ThreadPoolExecutor(max_workers=STREAMS) as pool:
        print(f"fault-injecting OpenAI-compatible server: {server.base_url}", flush=True)
        for i, s in enumerate(SCENARIOS):
            upstream = s.upstream() if s.upstream else server.port
            proxy = PROXIES[s.proxy](binaries[s.proxy], upstream, host=host_of(i), **s.settings).start()
            started = time.monotonic()
            try:
                errors = s.drive(Run(server, proxy, pool, s.label))
            finally:
                proxy.close()
            results[s.key] = {"label": s.label, "host": proxy.host, "proxy": s.proxy, "errors": errors,
                                "seconds": round(time.monotonic() - started, 2)}
            print(f"{s.label}: {proxy.host} {errors}", flush=True)
    by_host: Dict[str, List[Dict[str, Any]]] = {}
    for span in telemetry.spans.get_finished_spans():
        attrs = dict(span.attributes or {})
        if t.OUTCOME in attrs:
            by_host.setdefault(str(attrs.get(t.SERVER_ADDRESS)), []).append(attrs)
    for r in results.values():
        r["spans"] = by_host.get(r["host"], [])
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=str)
    print("holding: /metrics stays up", flush=True)
    while True:
        time.sleep(1)


#: The columns of the closing note's table: (heading, attribute).
COLUMNS = [
    ("outcome", t.OUTCOME), ("reason", t.TRUNCATION_REASON), ("error.cause", t.ERROR_CAUSE),
    ("idle_before_end (s)", t.IDLE_BEFORE_END), ("status", t.HTTP_RESPONSE_STATUS_CODE),
    ("intermediary", t.HTTP_INTERMEDIARY), ("connection.reused", t.CONNECTION_REUSED),
]


def _cell(values: List[Any]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if all(isinstance(v, float) for v in present):
        lo, hi = min(present), max(present)
        return f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}-{hi:.2f}"
    distinct = sorted({str(v).lower() if isinstance(v, bool) else str(v) for v in present})
    return " / ".join(distinct)


def table(results: Dict[str, Any]) -> str:
    """Markdown: one row per scenario, each cell the values its streams had (a range for seconds)."""
    head = ["scenario", "server", "streams"] + [h for h, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.values():
        spans = r["spans"]
        cells = [r["label"], r["host"], str(len(spans))] + [_cell([s.get(a) for s in spans]) for _, a in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        with open(sys.argv[2], encoding="utf-8") as fh:
            print(table(json.load(fh)))
    else:
        main(int(sys.argv[1]), sys.argv[2])
