"""Read the diagnosis numbers from Prometheus' HTTP API (stdlib urllib only)."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from .. import series as n
from .rules import INSTANT, ServerData


class PrometheusError(RuntimeError):
    """Prometheus is unreachable or answered with an error."""


#: Innermost causes of a connection the peer closed before any response
#: (httpcore "Server disconnected without sending a response", a reset),
#: the stale keep-alive signature when the pool does not say it was reused.
_CLOSED_UNANSWERED = frozenset({"RemoteProtocolError", "ConnectionResetError", "BrokenPipeError", "RemoteDisconnected"})


def _get(url: str, path: str, params: Dict[str, Any], timeout: float) -> Any:
    full = f"{url.rstrip('/')}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=timeout) as r:
            body = json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read().decode("utf-8")).get("error", "")
        except Exception:  # noqa: BLE001
            detail = ""
        raise PrometheusError(f"{url} answered HTTP {exc.code} {detail}".rstrip()) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusError(f"cannot reach Prometheus at {url}: {reason}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"Prometheus error: {body.get('error', body)}")
    return body["data"]["result"]


def _value(sample: Dict[str, Any]) -> float:
    v = float(sample["value"][1])
    return v if math.isfinite(v) else 0.0


#: How far back the value at a window's start is looked for (Prometheus' own lookback).
_LOOKBACK = "5m"


def _growth(series: str, window: str) -> str:
    """How much each counter series grew over ``window``, exactly (no ``increase()`` extrapolation).

    A series born inside the window counts whole; a counter reset counts 0.
    The value at the window's start is the last real sample before it
    (``last_over_time``, which skips staleness markers): after a failed
    scrape Prometheus marks every series of the target stale, and a plain
    ``offset`` would then see the series as new and count its whole total
    in the window after the gap (a loaded demo made "bursts" of 100 cuts so).
    """
    before = f"last_over_time({series}[{_LOOKBACK}] offset {window})"
    return f"clamp_min({series} - {before}, 0) or ({series} unless {before})"


class Reader:
    """The queries ``diagnose`` needs, over the last ``since`` seconds up to ``at``."""

    def __init__(self, url: str, job: Optional[str], since: float, at: Optional[float] = None, timeout: float = 10.0) -> None:
        self.url, self.timeout = url, timeout
        self.at = at if at is not None else time.time()
        self.since = since
        self.range = f"{max(1, int(math.ceil(since)))}s"
        self.sel = f'{n.SERVICE_LABEL}="{job}"' if job else ""

    def _m(self, extra: str = "") -> str:
        return "{" + ",".join(x for x in (self.sel, extra) if x) + "}"

    def query(self, expr: str) -> List[Dict[str, Any]]:
        return _get(self.url, "query", {"query": expr, "time": self.at}, self.timeout)

    def by(self, labels: str, metric: str, extra: str = "", window: Optional[str] = None) -> List[Dict[str, Any]]:
        return self.query(f"sum by ({labels}) ({_growth(metric + self._m(extra), window or self.range)})")

    def read(self) -> List[ServerData]:
        s, reason = n.SERVER, n.REASON
        servers: Dict[str, ServerData] = {}

        def get(sample: Dict[str, Any]) -> ServerData:
            name = sample["metric"].get(s, "")
            return servers.setdefault(name, ServerData(server=name or "(no server.address)"))

        outcome = n.OUTCOME
        for r in self.by(f"{s},{outcome},{reason},{n.STATUS_CODE},{n.INTERMEDIARY},{n.CONNECTION_REUSED},{n.ERROR_CAUSE}", n.OUTCOMES,
                         f'{outcome}=~"truncated|failed"'):
            d, m, v = get(r), r["metric"], _value(r)
            if m.get(outcome) == "truncated":
                d.cuts += v
                key = m.get(reason, "other")
                d.cuts_by_reason[key] = d.cuts_by_reason.get(key, 0.0) + v
            else:
                d.failures += v
                if m.get(n.STATUS_CODE):
                    k = (m[n.STATUS_CODE], m.get(n.INTERMEDIARY, ""))
                    d.failures_by_status[k] = d.failures_by_status.get(k, 0.0) + v
            if not m.get(n.STATUS_CODE) and (m.get(n.CONNECTION_REUSED) == "true" or m.get(n.ERROR_CAUSE) in _CLOSED_UNANSWERED):
                d.stale_reused += v
        idle = n.IDLE_BEFORE_END + "_bucket"
        for r in self.by(f"{s},le", idle, f'{reason}!="read_timeout"'):
            get(r).idle_buckets.append((float(r["metric"]["le"]), _value(r)))
        for r in self.by(f"{s},le", idle, f'{reason}="read_timeout"'):
            get(r).timeout_idle_buckets.append((float(r["metric"]["le"]), _value(r)))
        for r in self.by(s, n.RECOVERIES):
            get(r).recoveries += _value(r)
        gaps = _growth(n.CHUNK_INTERVAL + "_bucket" + self._m(), self.range)
        gap = f"histogram_quantile(0.99, sum by ({s}, le) ({gaps}))"
        for r in self.query(gap):
            if r["metric"].get(s, "") in servers and math.isfinite(float(r["value"][1])):
                servers[r["metric"].get(s, "")].p99_gap = float(r["value"][1])
        self._over_time(servers, idle)
        return list(servers.values())

    def _over_time(self, servers: Dict[str, ServerData], idle: str) -> None:
        """Instant cuts per window: a restart cuts every open stream in the same window."""
        step = float(max(1, int(math.ceil(self.since / 240.0))))
        le = 'le="%g"' % INSTANT
        grown = _growth(idle + self._m(le), "%gs" % step)
        expr = f"sum by ({n.SERVER}) ({grown})"
        params = {"query": expr, "start": self.at - self.since, "end": self.at, "step": step}
        for r in _get(self.url, "query_range", params, self.timeout):
            d = servers.get(r["metric"].get(n.SERVER, ""))
            if d is None:
                continue
            d.window_seconds = step
            d.instant_cuts_over_time = [round(float(v), 6) if math.isfinite(float(v)) else 0.0 for _, v in r["values"]]
