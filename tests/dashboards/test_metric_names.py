"""Proves names.py: the Prometheus names the OTel Prometheus exporter produces.

Creates every instrument of the telemetry contract with the real SDK, reads it
with PrometheusMetricReader into a private registry and scrapes the text
exposition.  (To be switched to the instrumentor's own instruments once
``llm_stream_otel.semconv`` lands.)
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")
pytest.importorskip("opentelemetry.exporter.prometheus")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402

from llm_stream_otel import series as names  # noqa: E402

SECONDS_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 ... 81.92
TOKEN_BUCKETS = [4**i for i in range(14)]  # 1 ... 67108864

COMMON = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "server.address": "api.openai.com",
    "server.port": 443,
}

EXTRA = {
    "gen_ai.client.operation.duration": {
        "llm.stream.outcome": "failed",
        "error.type": "APIConnectionError",
    },
    "gen_ai.client.token.usage": {"gen_ai.token.type": "input"},
    "llm.stream.outcomes": {
        "llm.stream.outcome": "truncated",
        "llm.stream.truncation.reason": "connection_reset",
        "llm.stream.is_retry": False,
        "http.response.status_code": 200,
        "llm.stream.http.intermediary": "nginx",
        "llm.stream.error.cause": "ConnectionResetError",
        "llm.stream.connection.reused": True,
    },
    "llm.stream.retries": {"llm.stream.retry.layer": "sdk"},
}


@pytest.fixture(scope="module")
def scraped():
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "names-test"}),
    )
    meter = provider.get_meter("llm_stream_otel.names_test")
    for otel_name, (kind, unit) in names.INSTRUMENTS.items():
        attrs = {**COMMON, **EXTRA.get(otel_name, {})}
        if kind == names.HISTOGRAM:
            buckets = TOKEN_BUCKETS if unit == "{token}" else SECONDS_BUCKETS
            inst = meter.create_histogram(
                otel_name, unit=unit, explicit_bucket_boundaries_advisory=buckets
            )
            inst.record(1.5, attrs)
        else:
            meter.create_counter(otel_name, unit=unit).add(1, attrs)
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s.labels)
    yield text, samples
    provider.shutdown()


def test_every_instrument_is_mapped():
    assert set(names.METRICS) == set(names.INSTRUMENTS)


@pytest.mark.parametrize("otel_name", sorted(names.INSTRUMENTS))
def test_scraped_series_names_match_mapping(scraped, otel_name):
    _, samples = scraped
    for series in names.series_names(otel_name):
        assert series in samples, f"{series} not scraped; got {sorted(samples)}"


def test_no_unexpected_series(scraped):
    _, samples = scraped
    ours = {n for n in samples if n.startswith(("gen_ai_", "llm_stream_"))}
    assert ours == set(names.all_series_names())


def test_label_names_match_mapping(scraped):
    _, samples = scraped
    seen = set()
    for series in names.all_series_names():
        for labels in samples[series]:
            seen.update(labels)
    used_attrs = set(COMMON) | {k for e in EXTRA.values() for k in e}
    for attr in used_attrs:
        assert names.label(attr) in seen, attr
    assert set(names.LABELS) == used_attrs


def test_bool_and_int_attribute_values(scraped):
    _, samples = scraped
    (labels,) = samples[names.OUTCOMES]
    assert labels[names.IS_RETRY] == "false"
    assert labels[names.label("server.port")] == "443"
    assert labels[names.REASON] == "connection_reset"


def test_histogram_buckets(scraped):
    _, samples = scraped
    les = sorted(float(l["le"]) for l in samples[names.TTFC + "_bucket"])
    assert les[:-1] == pytest.approx(SECONDS_BUCKETS) and les[-1] == float("inf")
    les = {float(l["le"]) for l in samples[names.TOKENS + "_bucket"]}
    assert 67108864.0 in les


def test_service_is_not_a_series_label(scraped):
    """service.name only reaches target_info: the 'service' is the job label."""
    _, samples = scraped
    for series in names.all_series_names():
        for labels in samples[series]:
            assert "service_name" not in labels
            assert names.SERVICE_LABEL not in labels  # set by the scrape
    assert samples["target_info"][0]["service_name"] == "names-test"


def test_contract_matches_telemetry_module():
    """names.INSTRUMENTS is the instrumentor's own list (telemetry.METRICS)."""
    telemetry = pytest.importorskip("llm_stream_otel.semconv")
    metrics = getattr(telemetry, "METRICS", None)
    if metrics is None:
        pytest.skip("llm_stream_otel.semconv has no METRICS table")
    assert {k: (v[0], v[1]) for k, v in metrics.items()} == names.INSTRUMENTS


def test_instrumentor_instruments_scrape_as_mapped():
    """The instrumentor's real instruments, scraped: exactly names.py's series."""
    mod = pytest.importorskip("llm_stream_otel.metrics.instruments")
    instruments_cls = getattr(mod, "Instruments", None)
    if instruments_cls is None:
        pytest.skip("llm_stream_otel.metrics.instruments has no Instruments class")
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    instruments = instruments_cls(provider.get_meter("llm_stream_otel"))
    seen = 0
    for inst in vars(instruments).values():
        if hasattr(inst, "record"):
            inst.record(1.0, COMMON)
            seen += 1
        elif hasattr(inst, "add"):
            inst.add(1, COMMON)
            seen += 1
    assert seen == len(names.INSTRUMENTS)
    text = generate_latest(registry).decode()
    scraped = {
        s.name
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith(("gen_ai_", "llm_stream_"))
    }
    provider.shutdown()
    assert scraped == set(names.all_series_names())
