"""A PNG preview of the overview dashboard, drawn from a real Prometheus.

    # from a Prometheus that scrapes an instrumented app (or the Collector)
    python -m tools.dashboards.preview --prometheus http://localhost:9090 \\
        --job chat-api --last 1h --out overview.png

    # one shot: start Prometheus + the fault-injecting demo, then draw
    # (this is how docs/overview-preview.png is made)
    python -m tools.dashboards.preview --run-demo --out docs/overview-preview.png

The panels are the overview dashboard's own (the bundled
``llm-streams-overview.json``): their PromQL, legends, units and alert
threshold lines, with the template variables substituted.  Drawn: the
summary stats (as the subtitle), truncation rate with the
LLMStreamTruncationRateHigh line, fix rate with the LLMStreamFixRateLow line,
time to first chunk p50 / p95 / p99, the chunk interval heatmap, and
outcomes by outcome and truncation reason (stacked).

Needs matplotlib (and numpy, which it brings); ``--run-demo`` needs the
``prometheus`` binary on PATH and the demo extra.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tools.servers import prometheus as harness
from tools.dashboards.queries import substitute

OVERVIEW_FILE = "llm-streams-overview.json"
TRUNCATION = "Truncation rate"
FIX = "Fix rate"
TTFC = "Time to first chunk p50 / p95 / p99"
HEATMAP = "Chunk interval heatmap"
OUTCOMES = "Outcomes by outcome and truncation reason"
#: Overview panels drawn, in order (timeseries / heatmap titles).
PANELS = (TRUNCATION, FIX, TTFC, HEATMAP, OUTCOMES)

Series = Tuple[str, List[float], List[float]]  # legend, unix times, values

_UNIT_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_LEGEND_RE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


# ------------------------------------------------------------------- helpers


def parse_duration(text: str) -> float:
    """``"90s"`` / ``"15m"`` / ``"1h"`` -> seconds."""
    m = _UNIT_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a duration (like 30s, 15m, 1h): {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def find_panel(dashboard: Mapping[str, Any], title: str, types: Sequence[str] = ("timeseries", "heatmap")) -> Mapping[str, Any]:
    from tools.dashboards.queries import iter_panels

    for panel in iter_panels(dashboard):
        if panel.get("title") == title and panel.get("type") in types:
            return panel
    raise KeyError(f"no {'/'.join(types)} panel titled {title!r} in the dashboard")


def threshold(panel: Mapping[str, Any]) -> Optional[float]:
    """The first non-base step of the panel's thresholds (the alert line)."""
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    values = [s["value"] for s in steps if s.get("value") is not None]
    return values[0] if values else None


def legend(fmt: Optional[str], labels: Mapping[str, str]) -> str:
    """Grafana's ``legendFormat`` applied to a series' labels."""
    if not fmt or fmt == "__auto":
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"
    text = _LEGEND_RE.sub(lambda m: labels.get(m.group(1), ""), fmt)
    return " ".join(text.split())


def panel_series(prom: "harness.PrometheusAPI", panel: Mapping[str, Any], variables: Mapping[str, str],
                 start: float, end: float, step: float) -> List[Series]:
    """Every series of every visible target of a panel, over [start, end]."""
    out: List[Series] = []
    for target in panel.get("targets", []):
        if target.get("hide") or not target.get("expr"):
            continue
        expr = substitute(target["expr"], variables)
        for s in prom.query_range(expr, start, end, step):
            ts = [float(t) for t, _ in s["values"]]
            vs = [float(v) for _, v in s["values"]]
            out.append((legend(target.get("legendFormat"), s["metric"]), ts, vs))
    return out


def stat_values(prom: "harness.PrometheusAPI", dashboard: Mapping[str, Any], variables: Mapping[str, str],
                at: float) -> Dict[str, Optional[float]]:
    """``{stat panel title: value}`` (instant queries at ``at``)."""
    from tools.dashboards.queries import iter_panels

    out: Dict[str, Optional[float]] = {}
    for panel in iter_panels(dashboard):
        if panel.get("type") != "stat":
            continue
        vals: List[float] = []
        for target in panel.get("targets", []):
            if target.get("expr") and not target.get("hide"):
                vals += harness.finite_values(prom.query(substitute(target["expr"], variables), at))
        out[panel["title"]] = vals[0] if vals else None
    return out


def fmt_seconds(x: float, _pos: Any = None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) < 1:
        return f"{x * 1000:.3g} ms"
    return f"{x:.3g} s"


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


# ------------------------------------------------------------------ drawing

_OUTCOME_COLOURS = {
    "completed": "#56a64b",
    "length": "#8ab8ff",
    "content_filter": "#b877d9",
    "abandoned": "#a0a0a0",
    "failed": "#6e4bb0",
}
_REASON_COLOURS = {
    "connection_reset": "#e02f44",
    "incomplete_read": "#ff7383",
    "read_timeout": "#c4162a",
    "error_event": "#ff9830",
    "missing_terminator": "#fade2a",
    "other": "#8f3bb8",
}
_OUTCOME_ORDER = ["completed", "length", "content_filter", "truncated", "abandoned", "failed"]


def _outcome_key(name: str) -> Tuple[int, str]:
    first = name.split(" ")[0]
    return (_OUTCOME_ORDER.index(first) if first in _OUTCOME_ORDER else len(_OUTCOME_ORDER), name)


def _outcome_colour(name: str) -> Optional[str]:
    parts = name.split(" ")
    if parts[0] == "truncated" and len(parts) > 1:
        return _REASON_COLOURS.get(parts[1])
    return _OUTCOME_COLOURS.get(parts[0])


def _dates(ts: Sequence[float]):  # type: ignore[no-untyped-def]
    return [datetime.fromtimestamp(t) for t in ts]


def _align(series: Sequence[Series], grid: Sequence[float]):  # type: ignore[no-untyped-def]
    """Series on a common time grid (missing points = NaN)."""
    import numpy as np

    index = {round(t, 3): i for i, t in enumerate(grid)}
    rows = []
    for _, ts, vs in series:
        row = np.full(len(grid), np.nan)
        for t, v in zip(ts, vs):
            i = index.get(round(t, 3))
            if i is not None:
                row[i] = v
        rows.append(row)
    return np.array(rows)


def _time_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(True, alpha=0.3)


def _draw_lines(ax: Any, series: Sequence[Series], *, unit: str, line: Optional[float], line_label: str,
                emphasise: str = "all selected", log: bool = False) -> None:
    import numpy as np
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    for name, ts, vs in sorted(series, key=lambda s: (s[0] == emphasise, s[0])):
        if name == emphasise:
            ax.plot(_dates(ts), vs, color="black", lw=2.2, label=name)
        else:
            ax.plot(_dates(ts), vs, lw=1.6, label=name)
    if line is not None:
        ax.axhline(line, color="#e02f44", ls="--", lw=1.5, label=line_label)
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        peak = max([v for _, _, vs in series for v in vs if np.isfinite(v)] + [line or 0, 0.1])
        ax.set_ylim(0, peak * 1.25)
    elif unit == "s":
        if log:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(fmt_seconds))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    _time_axis(ax)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def _draw_heatmap(fig: Any, ax: Any, series: Sequence[Series], window: str) -> None:
    import numpy as np
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    grid = sorted({t for _, ts, _ in series for t in ts})
    les = [float(name) if name not in ("+Inf", "Inf") else math.inf for name, _, _ in series]
    order = sorted(range(len(series)), key=lambda i: les[i])
    cumulative = np.nan_to_num(_align([series[i] for i in order], grid))
    counts = np.diff(cumulative, axis=0, prepend=0)  # cumulative `le` buckets -> per bucket
    counts = np.clip(counts, 0, None)
    bounds = [les[i] for i in order]
    finite = [b for b in bounds if math.isfinite(b)]
    upper = [b if math.isfinite(b) else finite[-1] * 2 for b in bounds]
    lower = [upper[0] / 2] + upper[:-1]
    # keep the rows from a bucket below the first gap to one above the last
    used = np.nonzero(counts.sum(axis=1) > 0)[0]
    lo, hi = (max(used[0] - 1, 0), min(used[-1] + 2, len(upper))) if len(used) else (0, len(upper))
    edges = np.array([lower[lo]] + upper[lo:hi])
    step = (grid[1] - grid[0]) if len(grid) > 1 else 1.0
    xedges = _dates([grid[0] - step / 2] + [t + step / 2 for t in grid])
    data = np.ma.masked_equal(counts[lo:hi], 0)
    # colour ~ sqrt(count), as the dashboard's heatmap (exponent 0.5): stalls stay visible
    mesh = ax.pcolormesh(xedges, edges, data, cmap="Oranges", shading="flat",
                         norm=PowerNorm(gamma=0.5, vmin=0, vmax=max(float(data.max() or 1), 1.0)))
    ax.set_yscale("log")
    ax.set_ylim(edges[0], edges[-1])
    ticks = [e for e in edges if math.isfinite(e)]
    ax.yaxis.set_major_locator(FixedLocator(ticks[:: max(1, len(ticks) // 8)]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(fmt_seconds))
    ax.set_facecolor("#f4f4f4")
    _time_axis(ax)
    ax.grid(False)
    bar = fig.colorbar(mesh, ax=ax, pad=0.01)
    bar.set_label(f"gaps per bucket (increase over {window})", fontsize=8)


def _draw_stacked(ax: Any, series: Sequence[Series]) -> None:
    import numpy as np

    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    series = sorted(series, key=lambda s: _outcome_key(s[0]))
    grid = sorted({t for _, ts, _ in series for t in ts})
    values = np.nan_to_num(_align(series, grid))
    colours = [_outcome_colour(name) for name, _, _ in series]
    fallback = iter(["#73bf69", "#5794f2", "#b877d9", "#ff9830", "#f2495c", "#8ab8ff"])
    colours = [c or next(fallback, None) for c in colours]
    ax.stackplot(_dates(grid), values, labels=[s[0] for s in series], colors=colours, alpha=0.85, lw=0)
    ax.set_ylim(0, float(values.sum(axis=0).max() or 1) * 1.35)
    _time_axis(ax)
    ax.legend(loc="upper left", ncol=4, fontsize=8.5, title="outcome, truncation reason",
              title_fontsize=8.5, framealpha=0.9)


def render(prom: "harness.PrometheusAPI", out: Path, *, job: str = harness.JOB, start: float, end: float,
           model: str = ".*", server: str = ".*", rate_interval: str = "1m", step: Optional[float] = None,
           dashboard: Optional[Mapping[str, Any]] = None, dpi: int = 100) -> Dict[str, Any]:
    """Draw the preview into ``out`` (PNG); returns what was drawn.

    The returned dict has ``stats`` (the summary stat values) and ``series``
    (``{panel title: number of series}``).
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    dash = dashboard if dashboard is not None else harness.load_dashboards()[OVERVIEW_FILE]
    span = max(end - start, 1.0)
    step = step or max(1.0, math.ceil(span / 400))
    variables = {
        "job": job, "model": model, "server": server,
        "__rate_interval": rate_interval, "__interval": rate_interval,
        "__range": f"{math.ceil(span)}s",
    }
    panels = {title: find_panel(dash, title) for title in PANELS}
    data = {title: panel_series(prom, p, variables, start, end, step) for title, p in panels.items()}
    stats = stat_values(prom, dash, variables, end)

    fig = Figure(figsize=(16, 13.5), dpi=dpi, layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1.05])
    ax_tr, ax_fix = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_ttfc, ax_heat = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    ax_out = fig.add_subplot(grid[2, :])

    tr_line = threshold(panels[TRUNCATION])
    _draw_lines(ax_tr, data[TRUNCATION], unit="percentunit", line=tr_line,
                line_label=f"alert: LLMStreamTruncationRateHigh above {_pct(tr_line)}")
    ax_tr.set_title("Truncation rate (truncated / all streams)", loc="left", fontweight="bold")
    fix_line = threshold(panels[FIX])
    _draw_lines(ax_fix, data[FIX], unit="percentunit", line=fix_line,
                line_label=f"alert: LLMStreamFixRateLow below {_pct(fix_line)}")
    ax_fix.set_title("Fix rate (recovered / first-attempt truncations)", loc="left", fontweight="bold")
    ttfc_line = threshold(panels[TTFC])
    _draw_lines(ax_ttfc, data[TTFC], unit="s", line=ttfc_line, log=True,
                line_label=f"alert: p95 above {fmt_seconds(ttfc_line)}" if ttfc_line else "")
    ax_ttfc.set_title("Time to first chunk p50 / p95 / p99 (log scale)", loc="left", fontweight="bold")
    _draw_heatmap(fig, ax_heat, data[HEATMAP], rate_interval)
    ax_heat.set_title("Chunk interval heatmap (gap between chunks)", loc="left", fontweight="bold")
    _draw_stacked(ax_out, data[OUTCOMES])
    ax_out.set_title("Outcomes by outcome and truncation reason (stacked)", loc="left", fontweight="bold")
    ax_out.set_ylabel("streams/s")
    for ax in (ax_tr, ax_fix):
        ax.set_ylabel("share of streams")
    ax_ttfc.set_ylabel("seconds")
    ax_heat.set_ylabel("gap (bucket upper bound)")
    for ax in (ax_tr, ax_fix, ax_ttfc, ax_heat, ax_out):
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))

    t0, t1 = datetime.fromtimestamp(start), datetime.fromtimestamp(end)
    fig.suptitle("LLM streams: overview (preview from real Prometheus data)", fontsize=16, fontweight="bold")
    streams = stats.get("Streams")
    fig.text(
        0.5, 0.955,
        f"job {job}   |   {t0:%Y-%m-%d %H:%M:%S} to {t1:%H:%M:%S} {time.strftime('%Z')}   |   rate window {rate_interval}   |   "
        f"streams {'–' if streams is None else f'{streams:.0f}'}   |   truncation rate "
        f"{_pct(stats.get('Truncation rate'))}   |   fix rate {_pct(stats.get('Fix rate'))}   |   "
        f"time to first chunk p95 {fmt_seconds(stats.get('Time to first chunk p95'))}",
        ha="center", fontsize=10.5, color="#333333",
    )
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.945))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", metadata={"Software": None})
    return {"stats": stats, "series": {t: len(s) for t, s in data.items()}, "out": out}


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tools.dashboards.preview",
        description="Draw a PNG preview of the overview dashboard from a real Prometheus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m tools.dashboards.preview --run-demo --out docs/overview-preview.png\n"
            "  python -m tools.dashboards.preview --prometheus http://localhost:9090 "
            "--job chat-api --last 1h --out overview.png\n"
        ),
    )
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus that has the metrics")
    source.add_argument("--run-demo", action="store_true",
                        help="start Prometheus (on PATH) and the fault-injecting demo, then draw their data")
    ap.add_argument("--out", type=Path, required=True, help="PNG file to write")
    ap.add_argument("--job", default=harness.JOB, help=f"the job (service) label (default {harness.JOB})")
    ap.add_argument("--model", default=".*", help="gen_ai_request_model regex (default all)")
    ap.add_argument("--server", default=".*", help="server_address regex (default all)")
    ap.add_argument("--last", default="15m", help="with --prometheus: time range ending now (default 15m)")
    ap.add_argument("--start", type=float, help="with --prometheus: range start, unix seconds (overrides --last)")
    ap.add_argument("--end", type=float, help="with --prometheus: range end, unix seconds (default now)")
    ap.add_argument("--rate-interval", default=None,
                    help="what $__rate_interval becomes (default 1m; 15s with --run-demo, which scrapes every 1s)")
    ap.add_argument("--duration", type=float, default=60.0, help="with --run-demo: seconds of traffic (default 60)")
    ap.add_argument("--seed", type=int, default=1, help="with --run-demo: traffic seed (default 1)")
    ap.add_argument("--dpi", type=int, default=100, help="resolution (default 100: 1600x1350 pixels)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.run_demo:
            with harness.demo_with_prometheus(duration=args.duration, seed=args.seed, job=args.job,
                                              log=lambda m: print(m, file=sys.stderr)) as run:
                info = render(run.prometheus, args.out, job=run.job, start=run.start, end=run.end,
                              model=args.model, server=args.server,
                              rate_interval=args.rate_interval or "15s", dpi=args.dpi)
        else:
            end = args.end if args.end is not None else time.time()
            start = args.start if args.start is not None else end - parse_duration(args.last)
            prom = harness.PrometheusAPI(args.prometheus)
            info = render(prom, args.out, job=args.job, start=start, end=end, model=args.model,
                          server=args.server, rate_interval=args.rate_interval or "1m", dpi=args.dpi)
    except harness.HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    empty = [title for title, count in info["series"].items() if not count]
    print(f"wrote {info['out']}" + (f" (no data for: {', '.join(empty)})" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
