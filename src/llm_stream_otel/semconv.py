"""Every telemetry name, unit, bucket boundary and attribute key in one place.

Dashboards, alert rules, the README and the tests all refer to these names;
keeping them here means a rename is one edit, and a test can prove that what
the README documents is what the code emits.
"""

from __future__ import annotations

from typing import Tuple

from opentelemetry.semconv._incubating.attributes import (
    error_attributes as _error,
)
from opentelemetry.semconv._incubating.attributes import (
    gen_ai_attributes as _gen_ai,
)
from opentelemetry.semconv._incubating.attributes import (
    server_attributes as _server,
)

# --- instrumentation scope -------------------------------------------------
SCOPE_NAME = "llm_stream_otel"

# --- semantic-convention attribute keys -------------------------------------
GEN_AI_OPERATION_NAME = _gen_ai.GEN_AI_OPERATION_NAME
GEN_AI_PROVIDER_NAME = getattr(_gen_ai, "GEN_AI_PROVIDER_NAME", "gen_ai.provider.name")
GEN_AI_REQUEST_MODEL = _gen_ai.GEN_AI_REQUEST_MODEL
GEN_AI_REQUEST_STREAM = getattr(_gen_ai, "GEN_AI_REQUEST_STREAM", "gen_ai.request.stream")
GEN_AI_RESPONSE_MODEL = _gen_ai.GEN_AI_RESPONSE_MODEL
GEN_AI_RESPONSE_ID = _gen_ai.GEN_AI_RESPONSE_ID
GEN_AI_RESPONSE_FINISH_REASONS = _gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = getattr(
    _gen_ai, "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK", "gen_ai.response.time_to_first_chunk"
)
GEN_AI_USAGE_INPUT_TOKENS = _gen_ai.GEN_AI_USAGE_INPUT_TOKENS
GEN_AI_USAGE_OUTPUT_TOKENS = _gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = getattr(
    _gen_ai, "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS", "gen_ai.usage.reasoning.output_tokens"
)
# Parts of the input tokens (which include them), where the API reports them (Anthropic).
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = getattr(
    _gen_ai, "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS", "gen_ai.usage.cache_read.input_tokens"
)
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = getattr(
    _gen_ai, "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS", "gen_ai.usage.cache_creation.input_tokens"
)
GEN_AI_TOKEN_TYPE = _gen_ai.GEN_AI_TOKEN_TYPE
# Request parameters newer than opentelemetry-semantic-conventions 0.48b0 (the oldest we support).
GEN_AI_REQUEST_SEED = getattr(_gen_ai, "GEN_AI_REQUEST_SEED", "gen_ai.request.seed")
GEN_AI_REQUEST_CHOICE_COUNT = getattr(_gen_ai, "GEN_AI_REQUEST_CHOICE_COUNT", "gen_ai.request.choice.count")
SERVER_ADDRESS = _server.SERVER_ADDRESS
SERVER_PORT = _server.SERVER_PORT
ERROR_TYPE = _error.ERROR_TYPE
ERROR_TYPE_OTHER = "_OTHER"

PROVIDER_OPENAI = "openai"
PROVIDER_ANTHROPIC = "anthropic"
OPERATION_CHAT = "chat"
OPERATION_TEXT_COMPLETION = "text_completion"
# google-genai: the Gemini Developer API and Vertex AI clients
PROVIDER_GCP_GEMINI = "gcp.gemini"
PROVIDER_GCP_VERTEX_AI = "gcp.vertex_ai"
OPERATION_GENERATE_CONTENT = "generate_content"

# --- llm.stream.* attribute keys (semconv has no names for these) ------------
OUTCOME = "llm.stream.outcome"
TRUNCATION_REASON = "llm.stream.truncation.reason"
IS_RETRY = "llm.stream.is_retry"
RETRY_LAYER = "llm.stream.retry.layer"
CHUNKS = "llm.stream.chunks"
TIME_TO_FIRST_CHUNK = "llm.stream.time_to_first_chunk"
MAX_GAP = "llm.stream.max_gap"
STALL_COUNT = "llm.stream.stalls"
ATTEMPT = "llm.stream.attempt"
SDK_RETRIES = "llm.stream.sdk_retries"
RECOVERED_AFTER_ATTEMPTS = "llm.stream.recovered_after_attempts"
STALL_THRESHOLD = "llm.stream.stall_threshold"
ENDED_AT_EXIT = "llm.stream.ended_at_exit"
ERROR_PLACE = "llm.stream.error.place"
FINISH_REASON_MISSING = "llm.stream.finish_reason_missing"
ERROR_AFTER_END = "llm.stream.error_after_end"
RETRY_EVIDENCE = "llm.stream.retry.evidence"
# Why a stream was cut (issue 13): read once per stream, never per chunk.
IDLE_BEFORE_END = "llm.stream.idle_before_end"
TIME_TO_HEADERS = "llm.stream.time_to_headers"
ERROR_CAUSE = "llm.stream.error.cause"
CONNECTION_REUSED = "llm.stream.connection.reused"
CONNECTION_IDLE = "llm.stream.connection.idle"
HTTP_INTERMEDIARY = "llm.stream.http.intermediary"
HTTP_REQUEST_ID = "llm.stream.http.request_id"
HTTP_CONTENT_TYPE = "llm.stream.http.content_type"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"  # semconv
NETWORK_PROTOCOL_VERSION = "network.protocol.version"  # semconv

# Values of llm.stream.http.intermediary (anything else is _OTHER).
INTERMEDIARY_NGINX = "nginx"
INTERMEDIARY_HAPROXY = "haproxy"
INTERMEDIARY_ENVOY = "envoy"
INTERMEDIARY_CLOUDFLARE = "cloudflare"
INTERMEDIARY_SQUID = "squid"
INTERMEDIARY_VARNISH = "varnish"
INTERMEDIARY_APACHE = "apache"
INTERMEDIARY_TRAEFIK = "traefik"
INTERMEDIARY_CADDY = "caddy"
INTERMEDIARY_AWS_ELB = "awselb"
INTERMEDIARY_KONG = "kong"
INTERMEDIARY_GOOGLE = "google"
INTERMEDIARY_AKAMAI = "akamai"

# --- span events --------------------------------------------------------------
EVENT_STALL = "llm.stream.stall"
EVENT_TRUNCATED = "llm.stream.truncated"
EVENT_CHUNK = "llm.stream.chunk"

# --- outcome values and truncation reasons -----------------------------------
OUTCOME_COMPLETED = "completed"
OUTCOME_LENGTH = "length"
OUTCOME_CONTENT_FILTER = "content_filter"
OUTCOME_TRUNCATED = "truncated"
OUTCOME_ABANDONED = "abandoned"
OUTCOME_FAILED = "failed"
OUTCOMES: Tuple[str, ...] = (
    OUTCOME_COMPLETED,
    OUTCOME_LENGTH,
    OUTCOME_CONTENT_FILTER,
    OUTCOME_TRUNCATED,
    OUTCOME_ABANDONED,
    OUTCOME_FAILED,
)

REASON_CONNECTION_RESET = "connection_reset"
REASON_INCOMPLETE_READ = "incomplete_read"
REASON_READ_TIMEOUT = "read_timeout"
REASON_ERROR_EVENT = "error_event"
REASON_MISSING_TERMINATOR = "missing_terminator"
REASON_OTHER = "other"
TRUNCATION_REASONS: Tuple[str, ...] = (
    REASON_CONNECTION_RESET,
    REASON_INCOMPLETE_READ,
    REASON_READ_TIMEOUT,
    REASON_ERROR_EVENT,
    REASON_MISSING_TERMINATOR,
    REASON_OTHER,
)

RETRY_LAYER_SDK = "sdk"
RETRY_LAYER_APPLICATION = "application"
RETRY_LAYER_HELPER = "helper"

RETRY_EVIDENCE_TRACE = "trace"
RETRY_EVIDENCE_FINGERPRINT = "fingerprint"

# --- metric instruments: (name, unit, description) ---------------------------
METRIC_DURATION = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
METRIC_CHUNKS = "llm.stream.chunks"
METRIC_STALLS = "llm.stream.stalls"
METRIC_OUTCOMES = "llm.stream.outcomes"
METRIC_RETRIES = "llm.stream.retries"
METRIC_RECOVERIES = "llm.stream.recoveries"
METRIC_INTERNAL_ERRORS = "llm.stream.internal_errors"
METRIC_IDLE_BEFORE_END = "llm.stream.idle_before_end"

UNIT_SECONDS = "s"
UNIT_TOKEN = "{token}"
UNIT_CHUNK = "{chunk}"
UNIT_STALL = "{stall}"
UNIT_STREAM = "{stream}"
UNIT_ATTEMPT = "{attempt}"
UNIT_ERROR = "{error}"

# Semconv-advised buckets: 0.01 s doubling to 81.92 s; tokens 1 .. 4**13.
SECONDS_BUCKETS: Tuple[float, ...] = tuple(round(0.01 * 2**i, 2) for i in range(14))
TOKEN_BUCKETS: Tuple[int, ...] = tuple(4**i for i in range(14))
CHUNK_BUCKETS: Tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
# Silence before a cut: sub-second (restarts, crashes: no silence) up to the
# usual proxy idle/read limits, each limit L bracketed by (L-1, L+1] so a cut
# at the limit has a bucket of its own (nginx proxy_read_timeout 60 s,
# HAProxy timeout server, ELB 60 s idle, Cloudflare 100 s, 120 s, 300 s).
IDLE_BEFORE_END_BUCKETS: Tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20,
    29, 31, 45, 59, 61, 90, 99, 101, 119, 121, 180, 299, 301, 600,
)

METRICS = {
    # name: (kind, unit, description)
    METRIC_DURATION: ("histogram", UNIT_SECONDS, "GenAI operation duration: request start to the end of the stream."),
    METRIC_TOKEN_USAGE: ("histogram", UNIT_TOKEN, "Input and output tokens, from the usage chunk when the stream sends one."),
    METRIC_TIME_TO_FIRST_CHUNK: ("histogram", UNIT_SECONDS, "Time from the request to the first chunk of the stream."),
    METRIC_TIME_PER_OUTPUT_CHUNK: ("histogram", UNIT_SECONDS, "Gap between consecutive chunks, one value per chunk after the first."),
    METRIC_CHUNKS: ("histogram", UNIT_CHUNK, "Chunks received per stream."),
    METRIC_STALLS: ("counter", UNIT_STALL, "Gaps between chunks longer than the stall threshold."),
    METRIC_OUTCOMES: ("counter", UNIT_STREAM, "Streams by outcome and truncation reason."),
    METRIC_RETRIES: ("counter", UNIT_ATTEMPT, "Retry attempts by layer (sdk, application, helper)."),
    METRIC_RECOVERIES: ("counter", UNIT_STREAM, "Truncated calls that a later attempt completed."),
    METRIC_INTERNAL_ERRORS: ("counter", UNIT_ERROR, "Errors inside llm_stream_otel itself (swallowed), by place."),
    METRIC_IDLE_BEFORE_END: ("histogram", UNIT_SECONDS, "Truncated streams: silence from the last chunk (or the headers) to the cut."),
}
