"""The Grafana dashboards, generated with grafana-foundation-sdk.

    PYTHONPATH=src python -m tools.dashboards.build --out dashboards/ [--deploy deploy/] [--check]

writes ``llm-streams-overview.json``, ``llm-streams-model.json`` and
``llm-streams-fleet.json`` (built on the recording rules) into
``--out`` and the Prometheus rules into ``<out>/alerts/``; with ``--deploy``
also the Grafana-managed alert rules into
``<deploy>/grafana/provisioning/alerting/``.  ``--check`` writes nothing and
exits 1 when a committed file differs from the generated one.

Needs Python >= 3.11 and ``grafana-foundation-sdk==1769699379!11.6.0`` (the
SDK build for Grafana 11.6; the SDK's PyPI versions carry an epoch, so an
unpinned install picks an older Grafana target) plus PyPI ``pyyaml``.

Every query takes its metric and label names from ``names.py``; every panel
has a description, a unit and thresholds.  Template variables: ``datasource``,
``job`` (the service: see ``names.py``), ``model`` (``gen_ai_request_model``)
and ``server`` (``server_address``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from tools.dashboards import alerts
from llm_stream_otel import series as n
from tools.dashboards import promql as q
from tools.dashboards import recording
from tools.dashboards import thresholds as t

OVERVIEW_UID = "llm-streams-overview"
MODEL_UID = "llm-streams-model"
OVERVIEW_FILE = "llm-streams-overview.json"
MODEL_FILE = "llm-streams-model.json"
FLEET_UID = "llm-streams-fleet"
FLEET_FILE = "llm-streams-fleet.json"
TAGS = ["llm-stream", "opentelemetry", "gen-ai"]

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
F = q.DASHBOARD_FILTERS
R = "$__rate_interval"
RANGE = "$__range"
BY_MODEL = (n.MODEL, n.SERVER)
MODEL_LEGEND = "{{%s}} @ {{%s}}" % (n.MODEL, n.SERVER)

DRILL_DOWN_URL = (
    f"/d/{MODEL_UID}/llm-streams-model?${{__url_time_range}}&${{datasource:queryparam}}"
    f"&${{job:queryparam}}&var-model=${{__field.labels.{n.MODEL}}}"
    f"&var-server=${{__field.labels.{n.SERVER}}}"
)


# --------------------------------------------------------------------- helpers


def _steps(*steps: tuple) -> db.ThresholdsConfig:
    """``_steps((None, "green"), (0.05, "red"))``."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


BASE = ((None, "green"),)


def _target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
            fmt: Optional[pm.PromQueryFormat] = None, exemplar: bool = False) -> prom.Dataquery:
    tq = prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    tq = tq.instant() if instant else tq.range()
    if fmt is not None:
        tq = tq.format(fmt)
    if exemplar:
        tq = tq.exemplar(True)
    return tq


def _drill_down_link() -> db.DashboardLink:
    return (
        db.DashboardLink("Drill down: this model and server")
        .type(dm.DashboardLinkType.LINK)
        .url(DRILL_DOWN_URL)
    )


class _Ids:
    def __init__(self) -> None:
        self.next = 1

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _timeseries(ids: _Ids, title: str, description: str, unit: str, targets: Sequence[prom.Dataquery],
                steps: tuple = BASE, *, line: bool = False, stacked: bool = False,
                min_val: Optional[float] = 0, drill_down: bool = False, w: int = 12, h: int = 8):
    p = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .thresholds(_steps(*steps))
        .thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(
                cm.GraphThresholdsStyleMode.DASHED if line else cm.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        .fill_opacity(30 if stacked else 10)
        .line_width(1)
        .span(w)
        .height(h)
        .targets(list(targets))
    )
    if min_val is not None:
        p = p.min(min_val)
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if drill_down:
        p = p.data_links([_drill_down_link()])
    return p


def _stat(ids: _Ids, title: str, description: str, unit: str, target: prom.Dataquery,
          steps: tuple, *, no_value: str = "no data", w: int = 6, h: int = 5):
    p = (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .thresholds(_steps(*steps))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .no_value(no_value)
        .span(w)
        .height(h)
        .with_target(target)
    )
    if unit == "percentunit":
        p = p.decimals(2)
    elif unit == "short":
        p = p.decimals(0)
    return p


def _bucket_heatmap(ids: _Ids, title: str, description: str, base: str, w: int = 12, h: int = 8):
    """A heatmap of a seconds histogram's buckets (one row per ``le``)."""
    return (
        heatmap.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DS)
        .unit("s")
        .thresholds(_steps(*BASE))
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit("s").decimals(2))
        .cell_values(heatmap.CellValues().unit("short"))
        .with_target(_target(q.sum_increase(base + "_bucket", R, ["le"], F), "{{le}}",
                             fmt=pm.PromQueryFormat.HEATMAP))
        .span(w)
        .height(h)
    )


def _chunk_heatmap(ids: _Ids, w: int = 12, h: int = 8):
    return _bucket_heatmap(
        ids, "Chunk interval heatmap",
        "Distribution of the gaps between consecutive chunks of a stream "
        f"({n.CHUNK_INTERVAL}, from the histogram buckets, 0.01 s to 81.92 s doubling). "
        "Each column is one time step, each row a bucket (upper bound `le`); the colour is how "
        "many gaps fell in it. A healthy stream is a tight band at tens of milliseconds; cells "
        "at seconds and above are stalls (over the stall threshold, default 5 s) that users "
        "see as a frozen answer.",
        n.CHUNK_INTERVAL, w, h)


def _quantiles(base: str, qs: Sequence[float], labels: Sequence[str] = (), exemplar: bool = False):
    """One target per quantile; legend ``p95`` or ``{{label}} p95``."""
    out = []
    for i, quant in enumerate(qs):
        legend = f"p{quant * 100:g}"
        if labels:
            legend = "{{%s}} %s" % (labels[0], legend)
        out.append(
            _target(q.quantile(quant, base, R, labels, F), legend, chr(ord("A") + i), exemplar=exemplar)
        )
    return out


def _job_variable(series: str, description: str) -> db.QueryVariable:
    """The multi-select service variable, its values read from ``series``."""
    return (
        db.QueryVariable("job")
        .label("Service (job)")
        .description(description)
        .datasource(DS)
        .query(f"label_values({series}, {n.SERVICE_LABEL})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _variables(d: db.Dashboard, *, single: bool) -> db.Dashboard:
    """datasource, job (service), provider, model, server; ``single`` for the drill-down."""
    d = d.with_variable(
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )
    d = d.with_variable(_job_variable(
        n.OUTCOMES,
        "Prometheus job label: the OTel service.name via the Collector, the scrape job name "
        "when Prometheus scrapes the app directly.",
    ))
    provider = (
        db.QueryVariable("provider")
        .label("Provider")
        .description("gen_ai.provider.name: openai, anthropic, gcp.gemini, gcp.vertex_ai, ...")
        .datasource(DS)
        .query(f'label_values({n.OUTCOMES}{{{n.SERVICE_LABEL}=~"$job"}}, {n.PROVIDER})')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    d = d.with_variable(provider)
    model = (
        db.QueryVariable("model")
        .label("Model")
        .description("gen_ai.request.model")
        .datasource(DS)
        .query(f'label_values({n.OUTCOMES}{{{n.SERVICE_LABEL}=~"$job", {n.PROVIDER}=~"$provider"}}, {n.MODEL})')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    server = (
        db.QueryVariable("server")
        .label("Server")
        .description("server.address")
        .datasource(DS)
        .query(f'label_values({n.OUTCOMES}{{{n.SERVICE_LABEL}=~"$job", {n.PROVIDER}=~"$provider", {n.MODEL}=~"$model"}}, {n.SERVER})')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    for v in (model, server):
        v = v.multi(not single).include_all(not single)
        if not single:
            v = v.all_value(".*")
        d = d.with_variable(v)
    return d


def _dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )


# ----------------------------------------------------------- shared panels


def _truncated_rate(labels: Sequence[str], window: str = R) -> str:
    return q.ratio(
        q.sum_rate(n.OUTCOMES, window, labels, F, **{n.OUTCOME: "truncated"}),
        q.sum_rate(n.OUTCOMES, window, labels, F),
        labels,
    )


def _fix_rate(labels: Sequence[str], window: str = R) -> str:
    return q.ratio(
        q.sum_rate(n.RECOVERIES, window, labels, F),
        q.sum_rate(n.OUTCOMES, window, labels, F, **{n.OUTCOME: "truncated", n.IS_RETRY: "false"}),
        labels,
    )


TRUNC_STEPS = ((None, "green"), (t.TRUNCATION_RATE.threshold, "red"))
FIX_STEPS = ((None, "red"), (t.FIX_RATE.threshold, "green"))
TTFC_STEPS = ((None, "green"), (t.TTFC_P95.threshold, "red"))

TRUNC_DESC = (
    "Share of streams that ended truncated: cut before a terminal event (finish_reason, [DONE], "
    "response.completed), whether the SDK raised (connection reset, incomplete read, read "
    "timeout, error event) or not (missing terminator). truncated / all outcomes, retries "
    f"included. The dashed line is the LLMStreamTruncationRateHigh threshold "
    f"({t.TRUNCATION_RATE.threshold:.0%}); finish_reason=length is a model limit and is "
    "counted apart, not here."
)
FIX_DESC = (
    "Of the logical calls whose first attempt was truncated, the share that a later attempt "
    "completed: recoveries / outcomes{outcome=truncated, is_retry=false}. 100% means every cut "
    "call was eventually answered; 0% means retries are missing or fail the same way. The dashed "
    f"line is the LLMStreamFixRateLow threshold ({t.FIX_RATE.threshold:.0%}). Empty when nothing "
    "was truncated."
)
TTFC_DESC = (
    f"Time to first chunk ({n.TTFC}) quantiles from the histogram: how long users wait before "
    "any output appears. p50 is the typical wait, p95/p99 the tail. The dashed line is the "
    f"LLMStreamTimeToFirstChunkHigh threshold on p95 ({t.TTFC_P95.threshold:g} s). Quantiles are "
    "interpolated within buckets that double from 0.01 s, so read them to about a bucket's width."
)
OUTCOMES_DESC = (
    "Streams per second by outcome (completed, length, content_filter, truncated, abandoned, "
    "failed) and, for truncated ones, by truncation reason (connection_reset, incomplete_read, "
    "read_timeout, error_event, missing_terminator, other). Stacked: the top is the total. A "
    "growing truncated band says something cuts streams; its reason says where to look."
)
RETRIES_DESC = (
    "Retry attempts per second by layer: sdk (the openai client's own retries of failed "
    "requests), application (the same request repeated by the application within the retry "
    "window), helper (the opt-in resilient stream helper). Retries that rise with truncations "
    "are working around cut streams; compare with the fix rate."
)
STALLS_DESC = (
    "Stalls per minute: gaps between two chunks longer than the stall threshold "
    "(OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD, default 5 s). Users see a frozen answer; "
    "stalls often precede read timeouts. LLMStreamStallRateHigh fires above "
    f"{t.STALL_RATE.threshold:g} stalls per stream."
)
TOKENS_DESC = (
    "Tokens per second by type (input = prompt, output = completion), from "
    f"{n.TOKENS}_sum. Only streams that reported usage (a usage chunk) count."
)
CHUNKS_DESC = (
    f"Chunks per stream quantiles ({n.CHUNKS}). A drop in the median with steady token usage "
    "means longer chunks; a drop with rising truncations means answers are cut short."
)


def _dashboard_link(title: str, uid: str, slug: str, tooltip: str) -> db.DashboardLink:
    """A link to the other bundled dashboard that keeps the time range and variables."""
    return (
        db.DashboardLink(title)
        .type(dm.DashboardLinkType.LINK)
        .url(f"/d/{uid}/{slug}")
        .icon("dashboard")
        .tooltip(tooltip)
        .include_vars(True)
        .keep_time(True)
    )


# ------------------------------------------------------------------ overview


def overview() -> db.Dashboard:
    ids = _Ids()
    d = _dashboard(
        OVERVIEW_UID,
        "LLM streams: overview",
        "Health of streaming LLM calls instrumented by llm-stream-otel: volume, truncation, "
        "fix rate by retries, time to first chunk, stalls, retries and tokens.",
    )
    d = _variables(d, single=False)
    d = d.link(
        _dashboard_link("LLM streams: model drill-down", MODEL_UID, "llm-streams-model", "One model and server in detail")
    )
    d = d.link(_fleet_link())
    range_trunc = q.ratio(
        q.sum_increase(n.OUTCOMES, RANGE, (), F, **{n.OUTCOME: "truncated"}),
        q.sum_increase(n.OUTCOMES, RANGE, (), F),
    )
    range_fix = q.ratio(
        q.sum_increase(n.RECOVERIES, RANGE, (), F),
        q.sum_increase(n.OUTCOMES, RANGE, (), F, **{n.OUTCOME: "truncated", n.IS_RETRY: "false"}),
    )
    d = (
        d.with_row(db.Row("Summary (selected time range)").id(ids()))
        .with_panel(_stat(
            ids, "Streams", "Streaming calls that ended in the selected time range, any outcome "
            "(all llm.stream.outcomes).", "short",
            _target(q.sum_increase(n.OUTCOMES, RANGE, (), F), "streams", instant=True), BASE))
        .with_panel(_stat(
            ids, "Truncation rate", TRUNC_DESC.replace("The dashed line is", "Red from"), "percentunit",
            _target(range_trunc, "truncation rate", instant=True), TRUNC_STEPS))
        .with_panel(_stat(
            ids, "Fix rate", FIX_DESC.replace("The dashed line is", "Red below"), "percentunit",
            _target(range_fix, "fix rate", instant=True), FIX_STEPS, no_value="no truncations"))
        .with_panel(_stat(
            ids, "Time to first chunk p95",
            "95th percentile time to first chunk over the selected range. Red from the "
            f"LLMStreamTimeToFirstChunkHigh threshold ({t.TTFC_P95.threshold:g} s).", "s",
            _target(f"histogram_quantile(0.95, {q.sum_increase(n.TTFC + '_bucket', RANGE, ['le'], F)})",
                    "p95", instant=True), TTFC_STEPS))
    )
    d = (
        d.with_row(db.Row("Streams and truncation").id(ids()))
        .with_panel(_timeseries(
            ids, "Stream volume",
            "Streaming calls per second by model and server, any outcome. Click a series to "
            "drill down into that model and server.",
            "reqps", [_target(q.sum_rate(n.OUTCOMES, R, BY_MODEL, F), MODEL_LEGEND)],
            drill_down=True))
        .with_panel(_timeseries(
            ids, "Truncation rate", TRUNC_DESC + " Click a series to drill down.", "percentunit",
            [_target(_truncated_rate(BY_MODEL), MODEL_LEGEND),
             _target(_truncated_rate(()), "all selected", "B")],
            TRUNC_STEPS, line=True, drill_down=True))
        .with_panel(_timeseries(
            ids, "Fix rate", FIX_DESC + " Click a series to drill down.", "percentunit",
            [_target(_fix_rate(BY_MODEL), MODEL_LEGEND),
             _target(_fix_rate(()), "all selected", "B")],
            FIX_STEPS, line=True, drill_down=True))
        .with_panel(_timeseries(
            ids, "Outcomes by outcome and truncation reason", OUTCOMES_DESC, "reqps",
            [_target(q.sum_rate(n.OUTCOMES, R, (n.OUTCOME, n.REASON), F),
                     "{{%s}} {{%s}}" % (n.OUTCOME, n.REASON))],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Retries by layer", RETRIES_DESC, "reqps",
            [_target(q.sum_rate(n.RETRIES, R, (n.RETRY_LAYER,), F), "{{%s}}" % n.RETRY_LAYER)],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Stalls per minute", STALLS_DESC + " Click a series to drill down.", "cpm",
            [_target(f"{q.sum_rate(n.STALLS, R, BY_MODEL, F)} * 60", MODEL_LEGEND)],
            drill_down=True))
    )
    d = (
        d.with_row(db.Row("Latency").id(ids()))
        .with_panel(_timeseries(
            ids, "Time to first chunk p50 / p95 / p99", TTFC_DESC, "s",
            _quantiles(n.TTFC, (0.5, 0.95, 0.99)), TTFC_STEPS, line=True))
        .with_panel(_chunk_heatmap(ids))
    )
    d = (
        d.with_row(db.Row("Tokens and chunks").id(ids()))
        .with_panel(_timeseries(
            ids, "Token usage (tokens/s)", TOKENS_DESC, "short",
            [_target(q.sum_rate(n.TOKENS + "_sum", R, (n.TOKEN_TYPE,), F), "{{%s}}" % n.TOKEN_TYPE)],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Chunks per stream p50 / p95", CHUNKS_DESC, "short",
            _quantiles(n.CHUNKS, (0.5, 0.95))))
    )
    return _why_cut_row(d, ids)


def _why_cut_row(d: db.Dashboard, ids: _Ids) -> db.Dashboard:
    """The row "Why streams are cut" (issue 13): the two signatures of a cut
    (how long it had been silent, how long it had run), reasons and status
    codes by server, and the reused-connection share."""
    truncated = {**F, n.OUTCOME: "=truncated"}
    reused = q.sum_rate(n.OUTCOMES, R, (n.SERVER,), F, **{n.CONNECTION_REUSED: "true"})
    with_conn = q.sum_rate(n.OUTCOMES, R, (n.SERVER,), {**F, n.CONNECTION_REUSED: "=~true|false"})
    heat = _bucket_heatmap(
        ids, "Silence before the cut",
        f"Truncated streams by the silence before the cut ({n.IDLE_BEFORE_END}: from the last "
        "chunk, or the response headers, to the cut). A band at one value (30, 60, 100, 120, "
        "300 s have buckets of their own) is an idle/read timeout of a proxy or of the client; "
        "cuts with no silence are restarts, crashes or resets.",
        n.IDLE_BEFORE_END)
    return (
        d.with_row(db.Row("Why streams are cut").id(ids()))
        .with_panel(heat)
        .with_panel(_timeseries(
            ids, "Elapsed at the cut p50 / p95",
            "How long truncated streams had run when they were cut (duration with outcome "
            "truncated). Near-constant values with silence before the cut: a proxy timeout; "
            "spread values with no silence, clustered in time: restarts.", "s",
            [_target(q.quantile(0.5, n.DURATION, R, (), truncated), "p50"),
             _target(q.quantile(0.95, n.DURATION, R, (), truncated), "p95", "B")]))
        .with_panel(_timeseries(
            ids, "Truncation reasons and causes by server",
            "Truncated streams per second by server, truncation reason and innermost exception "
            f"({n.ERROR_CAUSE}: the same on every openai SDK major).", "reqps",
            [_target(q.sum_rate(n.OUTCOMES, R, (n.SERVER, n.REASON, n.ERROR_CAUSE), truncated),
                     "{{%s}} {{%s}} {{%s}}" % (n.SERVER, n.REASON, n.ERROR_CAUSE))],
            stacked=True))
        .with_panel(_timeseries(
            ids, "HTTP status codes by server and intermediary",
            "Streaming calls per second by response status code and the intermediary named by the "
            "via/server headers. 502/504 from a proxy arrive before any body (outcome failed).",
            "reqps",
            [_target(q.sum_rate(n.OUTCOMES, R, (n.SERVER, n.STATUS_CODE, n.INTERMEDIARY),
                                {**F, n.STATUS_CODE: "!="}),
                     "{{%s}} {{%s}} {{%s}}" % (n.SERVER, n.STATUS_CODE, n.INTERMEDIARY))],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Reused-connection share",
            "Share of streams whose TCP connection carried an earlier instrumented stream "
            "(llm.stream.connection.reused). Cuts or failures concentrated on reused connections "
            "point to stale keep-alive connections (openai 2.x and 3.x close stream connections at [DONE]).",
            "percentunit", [_target(q.ratio(reused, with_conn, (n.SERVER,)), "{{%s}}" % n.SERVER)]))
    )


# ---------------------------------------------------------------- drill-down


def model_drill_down() -> db.Dashboard:
    ids = _Ids()
    d = _dashboard(
        MODEL_UID,
        "LLM streams: model drill-down",
        "One model on one server: outcomes and truncation reasons, fix rate, retries, failures, "
        "latency distributions, stalls and tokens.",
    )
    d = _variables(d, single=True)
    d = d.link(_dashboard_link("LLM streams: overview", OVERVIEW_UID, "llm-streams-overview", "All models and servers"))
    first_cuts = {n.OUTCOME: "truncated", n.IS_RETRY: "false"}
    d = (
        d.with_row(db.Row("Outcomes").id(ids()))
        .with_panel(_timeseries(
            ids, "Streams by outcome",
            "Streams per second of this model and server by outcome. Stacked: the top is the "
            "total volume. completed is healthy; length and content_filter are model-side "
            "endings; truncated, abandoned and failed are the ones to read.",
            "reqps", [_target(q.sum_rate(n.OUTCOMES, R, (n.OUTCOME,), F), "{{%s}}" % n.OUTCOME)],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Truncation rate", TRUNC_DESC, "percentunit",
            [_target(_truncated_rate(()), "truncation rate")], TRUNC_STEPS, line=True))
        .with_panel(_timeseries(
            ids, "Truncations by reason",
            "Truncated streams per second by llm.stream.truncation.reason: connection_reset, "
            "incomplete_read (chunked body cut), read_timeout, error_event (an error object in "
            "the stream), missing_terminator (the body ended cleanly without a terminal event: "
            "the SDK raises nothing), other. Split by first attempt vs retry.",
            "reqps",
            [_target(q.sum_rate(n.OUTCOMES, R, (n.REASON, n.IS_RETRY), F, **{n.OUTCOME: "truncated"}),
                     "{{%s}} (retry={{%s}})" % (n.REASON, n.IS_RETRY))],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Fix rate", FIX_DESC, "percentunit",
            [_target(_fix_rate(()), "fix rate")], FIX_STEPS, line=True))
        .with_panel(_timeseries(
            ids, "Cut calls and recoveries",
            "The two sides of the fix rate: logical calls whose first attempt was truncated "
            "(outcomes{outcome=truncated, is_retry=false}) and truncated calls that a later "
            "attempt completed (recoveries), per second. Recoveries lag cuts by the retry delay.",
            "reqps",
            [_target(q.sum_rate(n.OUTCOMES, R, (), F, **first_cuts), "first-attempt truncations"),
             _target(q.sum_rate(n.RECOVERIES, R, (), F), "recoveries", "B")]))
        .with_panel(_timeseries(
            ids, "Retries by layer", RETRIES_DESC, "reqps",
            [_target(q.sum_rate(n.RETRIES, R, (n.RETRY_LAYER,), F), "{{%s}}" % n.RETRY_LAYER)],
            stacked=True))
        .with_panel(_timeseries(
            ids, "Failures by error type",
            "Calls per second that ended with an error, by error.type (the exception class name, "
            f"or _OTHER), from {n.DURATION}_count. Includes failed requests (no stream) and "
            "streams broken by an exception.",
            "reqps",
            [_target(q.sum_rate(n.DURATION + "_count", R, (n.ERROR_TYPE,), {**F, n.ERROR_TYPE: '!='}),
                     "{{%s}}" % n.ERROR_TYPE)],
            stacked=True))
    )
    d = (
        d.with_row(db.Row("Latency and stalls").id(ids()))
        .with_panel(_timeseries(
            ids, "Time to first chunk p50 / p95 / p99",
            TTFC_DESC + " Exemplars (when exported) link to the trace of a slow call.", "s",
            _quantiles(n.TTFC, (0.5, 0.95, 0.99), exemplar=True), TTFC_STEPS, line=True))
        .with_panel(_timeseries(
            ids, "Operation duration p95 by outcome",
            f"95th percentile of the whole call's duration ({n.DURATION}) by outcome: how long "
            "completed streams take vs how long truncated ones ran before the cut.",
            "s", _quantiles(n.DURATION, (0.95,), (n.OUTCOME,))))
        .with_panel(_chunk_heatmap(ids))
        .with_panel(_timeseries(
            ids, "Chunk interval p50 / p99",
            f"Quantiles of the gap between consecutive chunks ({n.CHUNK_INTERVAL}). p50 is the "
            "streaming pace; a p99 in seconds means stalls.",
            "s", _quantiles(n.CHUNK_INTERVAL, (0.5, 0.99))))
        .with_panel(_timeseries(
            ids, "Stalls per minute", STALLS_DESC, "cpm",
            [_target(f"{q.sum_rate(n.STALLS, R, (), F)} * 60", "stalls/min")]))
        .with_panel(_timeseries(
            ids, "Chunks per stream p50 / p95", CHUNKS_DESC, "short",
            _quantiles(n.CHUNKS, (0.5, 0.95))))
    )
    d = (
        d.with_row(db.Row("Tokens and models").id(ids()))
        .with_panel(_timeseries(
            ids, "Token usage (tokens/s)", TOKENS_DESC, "short",
            [_target(q.sum_rate(n.TOKENS + "_sum", R, (n.TOKEN_TYPE,), F), "{{%s}}" % n.TOKEN_TYPE)],
            stacked=True, w=8))
        .with_panel(_timeseries(
            ids, "Tokens per stream (mean)",
            "Mean tokens per stream by type: token usage sum / count. A falling output mean "
            "with rising truncations means answers are being cut.",
            "short",
            [_target(f"{q.sum_rate(n.TOKENS + '_sum', R, (n.TOKEN_TYPE,), F)}\n/\n"
                     f"{q.sum_rate(n.TOKENS + '_count', R, (n.TOKEN_TYPE,), F)}",
                     "{{%s}}" % n.TOKEN_TYPE)], w=8))
        .with_panel(_timeseries(
            ids, "Response models",
            "Calls per second by gen_ai.response.model: which model versions actually served "
            "the requested model.",
            "reqps",
            [_target(q.sum_rate(n.DURATION + "_count", R, (n.RESPONSE_MODEL,), F),
                     "{{%s}}" % n.RESPONSE_MODEL)],
            stacked=True, w=8))
    )
    return d


# --------------------------------------------------------------------- fleet


def _fleet_link() -> db.DashboardLink:
    return _dashboard_link("LLM streams: fleet", FLEET_UID, "llm-streams-fleet", "Every service, from the recording rules")


def _rec(level: str, metric: str, op: str) -> str:
    """A recorded series of ``recording.py`` (``job`` ones filtered by ``$job``)."""
    name = f"{level}:{metric}:{op}{recording.WINDOW}"
    assert name in dict(recording.rules()), name
    return name + ('{%s=~"$job"}' % n.SERVICE_LABEL if level == "job" else "")


FLEET_SOURCE = (
    " Read from the recording rules (dashboards/alerts/llm-stream-recording-rules.yaml, "
    f"{recording.WINDOW} windows): load them into Prometheus or this panel stays empty."
)
STALL_STEPS = ((None, "green"), (t.STALL_RATE.threshold, "red"))
FLEET_SERIES = (
    ("Truncation rate", "llm_stream_truncation", "ratio_rate", "percentunit", TRUNC_STEPS, TRUNC_DESC),
    ("Fix rate", "llm_stream_fix", "ratio_rate", "percentunit", FIX_STEPS, FIX_DESC),
    ("Time to first chunk p95", n.TTFC, "p95_rate", "s", TTFC_STEPS,
     f"95th percentile time to first chunk. The dashed line is the LLMStreamTimeToFirstChunkHigh "
     f"threshold ({t.TTFC_P95.threshold:g} s)."),
    ("Stall rate", "llm_stream_stalls_per_stream", "ratio_rate", "short", STALL_STEPS,
     "Stalls per stream (gaps between chunks longer than the stall threshold). The dashed line is "
     f"the LLMStreamStallRateHigh threshold ({t.STALL_RATE.threshold:g} per stream)."),
)


def _fleet_variables(d: db.Dashboard) -> db.Dashboard:
    """datasource and job: recordings keep no model or server label."""
    d = d.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    return d.with_variable(_job_variable(
        _rec("job", "llm_stream_outcomes", "rate").split("{")[0],
        "The services shown in the per-service panels; the fleet-wide stats always cover every service.",
    ))


def _worst(ids: _Ids, title: str, description: str, expr: str, unit: str, steps: tuple):
    """A table of the worst services right now (instant query, one row per job)."""
    return (
        table.Panel()
        .id(ids())
        .title(title)
        .description(description + FLEET_SOURCE)
        .datasource(DS)
        .unit(unit)
        .decimals(2)
        .thresholds(_steps(*steps))
        .span(12)
        .height(7)
        .with_target(_target(expr, "{{%s}}" % n.SERVICE_LABEL, instant=True, fmt=pm.PromQueryFormat.TABLE))
    )


def fleet() -> db.Dashboard:
    ids = _Ids()
    d = _dashboard(
        FLEET_UID,
        "LLM streams: fleet",
        "Every service at once, from the job: and fleet: recording rules: fleet-wide truncation, "
        "fix rate, time to first chunk and stalls, the same per service, and the worst services.",
    )
    d = _fleet_variables(d)
    d = d.link(_dashboard_link("LLM streams: overview", OVERVIEW_UID, "llm-streams-overview", "One service in detail"))
    streams = _rec("job", "llm_stream_outcomes", "rate")
    d = (
        d.with_row(db.Row("Fleet-wide (every service, last %s)" % recording.WINDOW).id(ids()))
        .with_panel(_stat(
            ids, "Services", "Services (job label values) that ended a stream in the last "
            f"{recording.WINDOW}, among the selected ones." + FLEET_SOURCE, "short",
            _target(f"count({streams})", "services", instant=True), BASE, w=4))
        .with_panel(_stat(
            ids, "Streams per second", "Streaming calls per second over the selected services, any "
            "outcome." + FLEET_SOURCE, "reqps",
            _target(f"sum({streams})", "streams/s", instant=True), BASE, w=4))
    )
    for title, metric, op, unit, steps, desc in FLEET_SERIES:
        d = d.with_panel(_stat(
            ids, f"{title} (fleet)", f"Fleet-wide, every service pooled. {desc}".replace("The dashed line is", "Red from")
            + FLEET_SOURCE, unit, _target(_rec("fleet", metric, op), "fleet", instant=True), steps,
            no_value="no truncations" if metric == "llm_stream_fix" else "no data", w=4))
    d = d.with_row(db.Row("By service").id(ids()))
    for title, metric, op, unit, steps, desc in FLEET_SERIES:
        d = d.with_panel(_timeseries(
            ids, f"{title} by service", f"One line per service. {desc}" + FLEET_SOURCE, unit,
            [_target(_rec("job", metric, op), "{{%s}}" % n.SERVICE_LABEL)], steps, line=True))
    d = (
        d.with_row(db.Row("Worst services (now)").id(ids()))
        .with_panel(_worst(
            ids, "Highest truncation rate", "The five services with the highest truncation rate "
            "right now. Red from the LLMStreamTruncationRateHigh threshold.",
            f"topk(5, {_rec('job', 'llm_stream_truncation', 'ratio_rate')})", "percentunit", TRUNC_STEPS))
        .with_panel(_worst(
            ids, "Slowest time to first chunk p95", "The five services with the highest time to "
            "first chunk p95 right now. Red from the LLMStreamTimeToFirstChunkHigh threshold.",
            f"topk(5, {_rec('job', n.TTFC, 'p95_rate')})", "s", TTFC_STEPS))
    )
    return d


# ----------------------------------------------------------------- rendering


def _to_dict(d: db.Dashboard) -> dict:
    return json.loads(JSONEncoder(sort_keys=True).encode(d.build()))


def build_all() -> dict[str, dict]:
    """File name -> dashboard JSON (as a dict)."""
    return {OVERVIEW_FILE: _to_dict(overview()), MODEL_FILE: _to_dict(model_drill_down()),
            FLEET_FILE: _to_dict(fleet())}


def render(dashboard: dict) -> str:
    """The committed text of one dashboard."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files(out: Path, deploy: Optional[Path] = None) -> dict[Path, str]:
    files = {out / name: render(dash) for name, dash in build_all().items()}
    for rel, text in alerts.alert_files().items():
        if rel.startswith("dashboards/"):
            files[out / rel[len("dashboards/"):]] = text
        elif deploy is not None and rel.startswith("deploy/"):
            files[deploy / rel[len("deploy/"):]] = text
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.dashboards.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("dashboards"), help="dashboards directory (default: dashboards)")
    ap.add_argument("--deploy", type=Path, default=None, help="deploy directory: also write the Grafana alert provisioning")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = ap.parse_args(argv)
    stale = []
    for path, text in generated_files(args.out, args.deploy).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    for path in stale:
        print(f"{verb}: {path}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
