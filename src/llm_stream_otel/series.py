"""OTel instrument / attribute names -> Prometheus metric / label names.

This is the ONE place the dashboards, the alert rules and their tests take
Prometheus names from.  The mapping was observed (and is re-checked by
``tests/dashboards/test_metric_names.py``) by creating the instruments with
the OpenTelemetry SDK, reading them with
``opentelemetry.exporter.prometheus.PrometheusMetricReader`` and scraping
``prometheus_client.generate_latest``.  The rules that produce it, shared by
the Python exporter and the Collector's ``prometheus`` exporter (default
``add_metric_suffixes: true`` / ``UnderscoreEscapingWithSuffixes``):

- ``.`` and every other character outside ``[a-zA-Z0-9_:]`` becomes ``_``;
- unit ``s`` appends ``_seconds``; units in braces (``{token}``, ``{chunk}``,
  ``{stall}``, ...) are annotations and append nothing;
- monotonic counters append ``_total``;
- histograms are exposed as ``<base>_bucket`` (with ``le``), ``<base>_sum``
  and ``<base>_count``;
- attribute keys become label names the same way (``gen_ai.request.model``
  -> ``gen_ai_request_model``); a bool attribute value becomes the label
  value ``true`` / ``false``;
- both exporters add ``otel_scope_name`` / ``otel_scope_version`` labels and a
  ``target_info`` series that carries the resource attributes.

The service: the Python exporter does NOT put ``service.name`` on each series
(only on ``target_info``); the series get their ``job`` / ``instance`` labels
from Prometheus' scrape config.  The Collector's prometheus exporter sets
``job`` = ``service.name`` (``service.namespace/service.name`` when a
namespace is set) and ``instance`` = ``service.instance.id`` on every series,
which Prometheus keeps when the scrape job has ``honor_labels: true`` (as in
``deploy/prometheus/prometheus.yml``; without it they land in
``exported_job`` / ``exported_instance``).  So the dashboards' "service"
variable filters on ``job`` (:data:`SERVICE_LABEL`): the service name via the
Collector, the scrape job name when Prometheus scrapes an app directly.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

HISTOGRAM = "histogram"
COUNTER = "counter"

#: OTel instrument name -> (kind, unit) as in the design contract.
INSTRUMENTS: Dict[str, Tuple[str, str]] = {
    "gen_ai.client.operation.duration": (HISTOGRAM, "s"),
    "gen_ai.client.operation.time_to_first_chunk": (HISTOGRAM, "s"),
    "gen_ai.client.operation.time_per_output_chunk": (HISTOGRAM, "s"),
    "gen_ai.client.token.usage": (HISTOGRAM, "{token}"),
    "llm.stream.chunks": (HISTOGRAM, "{chunk}"),
    "llm.stream.stalls": (COUNTER, "{stall}"),
    "llm.stream.outcomes": (COUNTER, "{stream}"),
    "llm.stream.retries": (COUNTER, "{attempt}"),
    "llm.stream.recoveries": (COUNTER, "{stream}"),
    "llm.stream.internal_errors": (COUNTER, "{error}"),
    "llm.stream.idle_before_end": (HISTOGRAM, "s"),
}

#: OTel instrument name -> Prometheus base name (as observed).  Histograms
#: are queried as ``<base>_bucket`` / ``_sum`` / ``_count``; counters' base
#: name already carries ``_total`` and is the series name itself.
METRICS: Dict[str, str] = {
    "gen_ai.client.operation.duration": "gen_ai_client_operation_duration_seconds",
    "gen_ai.client.operation.time_to_first_chunk": "gen_ai_client_operation_time_to_first_chunk_seconds",
    "gen_ai.client.operation.time_per_output_chunk": "gen_ai_client_operation_time_per_output_chunk_seconds",
    "gen_ai.client.token.usage": "gen_ai_client_token_usage",
    "llm.stream.chunks": "llm_stream_chunks",
    "llm.stream.stalls": "llm_stream_stalls_total",
    "llm.stream.outcomes": "llm_stream_outcomes_total",
    "llm.stream.retries": "llm_stream_retries_total",
    "llm.stream.recoveries": "llm_stream_recoveries_total",
    "llm.stream.internal_errors": "llm_stream_internal_errors_total",
    "llm.stream.idle_before_end": "llm_stream_idle_before_end_seconds",
}

#: OTel attribute key -> Prometheus label name (as observed).
LABELS: Dict[str, str] = {
    "gen_ai.operation.name": "gen_ai_operation_name",
    "gen_ai.provider.name": "gen_ai_provider_name",
    "gen_ai.request.model": "gen_ai_request_model",
    "gen_ai.response.model": "gen_ai_response_model",
    "gen_ai.token.type": "gen_ai_token_type",
    "server.address": "server_address",
    "server.port": "server_port",
    "error.type": "error_type",
    "llm.stream.outcome": "llm_stream_outcome",
    "llm.stream.truncation.reason": "llm_stream_truncation_reason",
    "llm.stream.is_retry": "llm_stream_is_retry",
    "llm.stream.retry.layer": "llm_stream_retry_layer",
    "http.response.status_code": "http_response_status_code",
    "llm.stream.http.intermediary": "llm_stream_http_intermediary",
    "llm.stream.error.cause": "llm_stream_error_cause",
    "llm.stream.connection.reused": "llm_stream_connection_reused",
}

#: The label the dashboards' "service" variable and the alerts group by.
SERVICE_LABEL = "job"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric(otel_name: str) -> str:
    """Prometheus base name of an OTel instrument (KeyError if unknown)."""
    return METRICS[otel_name]


def label(otel_key: str) -> str:
    """Prometheus label name of an OTel attribute key (KeyError if unknown)."""
    return LABELS[otel_key]


def series_names(otel_name: str) -> List[str]:
    """The series names one instrument is exposed as."""
    base = METRICS[otel_name]
    if INSTRUMENTS[otel_name][0] == HISTOGRAM:
        return [base + s for s in HISTOGRAM_SUFFIXES]
    return [base]


def all_series_names() -> List[str]:
    """Every series name a query or rule may reference."""
    return sorted(n for o in METRICS for n in series_names(o))


# Short aliases used by the dashboard and alert builders.
DURATION = METRICS["gen_ai.client.operation.duration"]
TTFC = METRICS["gen_ai.client.operation.time_to_first_chunk"]
CHUNK_INTERVAL = METRICS["gen_ai.client.operation.time_per_output_chunk"]
TOKENS = METRICS["gen_ai.client.token.usage"]
CHUNKS = METRICS["llm.stream.chunks"]
STALLS = METRICS["llm.stream.stalls"]
OUTCOMES = METRICS["llm.stream.outcomes"]
RETRIES = METRICS["llm.stream.retries"]
RECOVERIES = METRICS["llm.stream.recoveries"]
INTERNAL_ERRORS = METRICS["llm.stream.internal_errors"]

#: Instruments on no dashboard panel: internal errors of ours should stay at 0
#: (a panel would be empty, and every panel must show data); alert or graph them
#: ad hoc (``llm_stream_internal_errors_total``).
NOT_ON_DASHBOARDS = frozenset({INTERNAL_ERRORS})
IDLE_BEFORE_END = METRICS["llm.stream.idle_before_end"]

PROVIDER = LABELS["gen_ai.provider.name"]
MODEL = LABELS["gen_ai.request.model"]
RESPONSE_MODEL = LABELS["gen_ai.response.model"]
SERVER = LABELS["server.address"]
OUTCOME = LABELS["llm.stream.outcome"]
REASON = LABELS["llm.stream.truncation.reason"]
IS_RETRY = LABELS["llm.stream.is_retry"]
RETRY_LAYER = LABELS["llm.stream.retry.layer"]
TOKEN_TYPE = LABELS["gen_ai.token.type"]
ERROR_TYPE = LABELS["error.type"]
STATUS_CODE = LABELS["http.response.status_code"]
INTERMEDIARY = LABELS["llm.stream.http.intermediary"]
ERROR_CAUSE = LABELS["llm.stream.error.cause"]
CONNECTION_REUSED = LABELS["llm.stream.connection.reused"]
