"""Pure diagnosis rules: per-server numbers read from Prometheus -> findings.

No I/O here, so every rule is unit-tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Below this many broken streams (cuts + failures) on a server we say so
#: instead of guessing a cause.
MIN_BROKEN = 5
#: A silence at or below this (s) is "no silence": the cut came out of the blue.
INSTANT = 0.1
#: Silence below this is not an idle timeout (no proxy is set that low).
MIN_IDLE_TIMEOUT = 0.5
#: Share of the silent cuts that must sit in one bucket to call it near-constant.
CONSTANT_SHARE = 0.6
#: A time window is a burst when it holds at least this many instant cuts ...
BURST_MIN = 3
#: ... above the median window, and this many standard deviations (sqrt(median)) above it.
BURST_FACTOR = 3.0
#: A cause is reported once it explains at least this many streams.
MIN_EVIDENCE = 2


@dataclass
class ServerData:
    """What Prometheus says about one server address over the window."""

    server: str
    cuts: float = 0.0  # truncated streams
    failures: float = 0.0  # failed streams (no body)
    #: truncated streams by reason (``llm_stream_truncation_reason``)
    cuts_by_reason: Dict[str, float] = field(default_factory=dict)
    #: cumulative idle-before-end buckets (upper bound, count) of cuts that are NOT client read timeouts
    idle_buckets: List[Tuple[float, float]] = field(default_factory=list)
    #: same for client read timeouts
    timeout_idle_buckets: List[Tuple[float, float]] = field(default_factory=list)
    #: instant (silence <= INSTANT) cuts per time window, oldest first
    instant_cuts_over_time: List[float] = field(default_factory=list)
    window_seconds: float = 0.0
    #: failed streams by (status code, intermediary)
    failures_by_status: Dict[Tuple[str, str], float] = field(default_factory=dict)
    #: broken streams with no HTTP status: on a reused pooled connection, or closed by the peer unanswered
    stale_reused: float = 0.0
    recoveries: float = 0.0  # streams that a retry recovered
    p99_gap: Optional[float] = None  # s between chunks (all streams)


@dataclass
class Finding:
    cause: str  # a stable key: proxy_idle_timeout | restart | client_read_timeout | stale_connection | bad_gateway
    title: str
    streams: float
    share: float  # of the server's broken streams (cuts + failures)
    evidence: str
    fix: str
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerDiagnosis:
    server: str
    cuts: float
    failures: float
    findings: List[Finding]
    note: str = ""  # e.g. too little data

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _buckets_to_counts(cumulative: Sequence[Tuple[float, float]]) -> List[Tuple[float, float, float]]:
    """Cumulative (le, count) -> (lower, upper, count) per bucket, sorted."""
    out: List[Tuple[float, float, float]] = []
    prev_le, prev = 0.0, 0.0
    for le, count in sorted(cumulative):
        out.append((prev_le, le, max(0.0, count - prev)))
        prev_le, prev = le, count
    return out


def _fmt_s(x: float) -> str:
    return "+Inf" if x == float("inf") else f"{x:g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def proxy_idle_timeout(d: ServerData, total: float) -> Optional[Finding]:
    """Cuts after a near-constant silence: an idle/read timeout in a proxy."""
    buckets = [b for b in _buckets_to_counts(d.idle_buckets) if b[0] >= MIN_IDLE_TIMEOUT]
    silent = sum(c for _, _, c in buckets)
    if silent < MIN_EVIDENCE:
        return None
    lo, hi, count = max(buckets, key=lambda b: b[2])
    if count < MIN_EVIDENCE or count < CONSTANT_SHARE * silent:
        return None
    about = _fmt_s(hi) if hi != float("inf") else f">{_fmt_s(lo)}"
    return Finding(
        "proxy_idle_timeout",
        f"proxy idle/read timeout of about {about} s",
        count,
        count / total,
        f"{count:g} cuts came after a silence of {_fmt_s(lo)}-{_fmt_s(hi)} s "
        f"({_pct(count / silent)} of the cuts that followed a silence); the stream was cut by whoever waits "
        "that long for a byte",
        f"raise the proxy's idle/read timeout above the model's longest silence: nginx `proxy_read_timeout` "
        f"(default 60 s), HAProxy `timeout server` / `timeout tunnel`, a load balancer's idle timeout; "
        f"or have the server send SSE comments (`: keep-alive`) more often than every {_fmt_s(lo)} s",
        {"silence_low_s": lo, "silence_high_s": hi},
    )


def restarts(d: ServerData, total: float) -> Optional[Finding]:
    """Cuts with no silence, clustered in time across streams: the server (or a proxy) restarted."""
    windows = d.instant_cuts_over_time
    nonzero = sorted(w for w in windows if w > 0)
    if not nonzero:
        return None
    ordered = sorted(windows)
    median = ordered[len(ordered) // 2]
    # Poisson-like background: a burst stands well above the usual window.
    bursts = [w for w in windows if w >= median + max(BURST_MIN, BURST_FACTOR * median ** 0.5)]
    clustered = sum(w - median for w in bursts)  # above the background: the restart's own cuts
    if clustered < BURST_MIN:
        return None
    instant = sum(nonzero)
    fix_rate = min(1.0, d.recoveries / d.cuts) if d.cuts else 0.0
    return Finding(
        "restart",
        "server or proxy restarts",
        clustered,
        clustered / total,
        f"{clustered:g} cuts with no silence before them (<= {INSTANT:g} s) came in {len(bursts)} burst(s) "
        f"of {', '.join(f'{b:g}' for b in bursts)} streams within {d.window_seconds:g} s, against a usual "
        f"{median:g} per {d.window_seconds:g} s ({_pct(clustered / instant)} of the {instant:g} instant cuts): "
        "many open streams were cut at once",
        f"retry cut streams (backoff, resume or restart the stream); retries recovered {_pct(fix_rate)} "
        f"of the cut streams here ({d.recoveries:g} of {d.cuts:g}); drain connections before a restart",
        {"bursts": bursts, "fix_rate": fix_rate},
    )


def client_read_timeout(d: ServerData, total: float) -> Optional[Finding]:
    """Read timeouts raised by the client: its timeout is below the model's silences."""
    count = d.cuts_by_reason.get("read_timeout", 0.0)
    if count < MIN_EVIDENCE:
        return None
    buckets = [b for b in _buckets_to_counts(d.timeout_idle_buckets) if b[2] > 0]
    at = max(buckets, key=lambda b: b[2]) if buckets else None
    gap = f"; the p99 gap between chunks is {d.p99_gap:.3g} s" if d.p99_gap is not None else ""
    timeout = f" after {_fmt_s(at[0])}-{_fmt_s(at[1])} s of silence" if at else ""
    return Finding(
        "client_read_timeout",
        "read timeout raised by the client",
        count,
        count / total,
        f"{count:g} streams ended with the client's own read timeout{timeout}{gap}",
        "raise the client's read timeout above the model's longest silences (openai: "
        "`timeout=httpx.Timeout(connect=5, read=...)`), at least above the p99 gap",
        {"p99_gap_s": d.p99_gap, "silence_low_s": at[0] if at else None, "silence_high_s": at[1] if at else None},
    )


def stale_connection(d: ServerData, total: float) -> Optional[Finding]:
    """Failures on a reused pooled connection before any status: the peer had closed it."""
    if d.stale_reused < MIN_EVIDENCE:
        return None
    return Finding(
        "stale_connection",
        "stale pooled keep-alive connections",
        d.stale_reused,
        d.stale_reused / total,
        f"{d.stale_reused:g} requests got no HTTP status at all: the connection (reused from the pool, or "
        "closed by the peer before any response) had been closed by the server or proxy while it sat idle",
        "set the client's keep-alive expiry below the server's/proxy's idle timeout "
        "(httpx: `limits=httpx.Limits(keepalive_expiry=...)`), or retry requests that fail on a reused connection",
    )


def bad_gateway(d: ServerData, total: float) -> List[Finding]:
    """502/504 from an intermediary before the body, one finding per (status, intermediary)."""
    out: List[Finding] = []
    for (status, via), count in sorted(d.failures_by_status.items()):
        if status not in ("502", "504") or count < MIN_EVIDENCE:
            continue
        who = via if via and via != "_OTHER" else "an intermediary"
        what = "bad gateway: the upstream broke or refused" if status == "502" else "gateway timeout: the upstream was too slow to answer"
        out.append(Finding(
            f"http_{status}",
            f"HTTP {status} from {who} before the body",
            count,
            count / total,
            f"{count:g} streams failed with {status} ({what}); response `server`/`via`: {via or 'none'}",
            (f"look at {who}'s error log and its upstream; " +
             ("raise its upstream/connect timeout (nginx `proxy_read_timeout` / `proxy_connect_timeout`, "
              "HAProxy `timeout server`) or fix the slow upstream" if status == "504"
              else "check the upstream is up and reachable from it; retry 502 with backoff")),
            {"status": status, "intermediary": via},
        ))
    return out


def diagnose_server(d: ServerData, min_broken: int = MIN_BROKEN) -> ServerDiagnosis:
    """Every finding for one server, biggest first; a note when there is too little data."""
    total = d.cuts + d.failures
    if total < min_broken:
        return ServerDiagnosis(d.server, d.cuts, d.failures, [],
                               f"too little data: {total:g} broken streams (at least {min_broken} needed)")
    findings = [f for f in (proxy_idle_timeout(d, total), restarts(d, total),
                            client_read_timeout(d, total), stale_connection(d, total)) if f]
    findings += bad_gateway(d, total)
    findings.sort(key=lambda f: -f.streams)
    note = "" if findings else "no known signature: look at the 'Why streams are cut' dashboard row"
    return ServerDiagnosis(d.server, d.cuts, d.failures, findings, note)


def diagnose(servers: Sequence[ServerData], min_broken: int = MIN_BROKEN) -> List[ServerDiagnosis]:
    return [diagnose_server(d, min_broken) for d in sorted(servers, key=lambda s: s.server)]
