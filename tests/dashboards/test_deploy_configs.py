"""Static validation of deploy/: compose, Collector, Prometheus, Grafana, Tempo.

No Docker engine and no otelcol binary here, so the structure is checked
against itself: every mounted file exists, every pipeline component is
defined, ports and service names line up, and promtool checks the
Prometheus config together with the rules it loads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

from tools.dashboards import recording, thresholds  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
COLLECTOR = DEPLOY / "otel-collector" / "config.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
TEMPO = DEPLOY / "tempo" / "tempo.yaml"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose():
    return load(COMPOSE)


def _mounts(service: dict):
    """(host path resolved against deploy/, container path) of bind mounts."""
    for vol in service.get("volumes", []):
        host, container = vol.split(":")[:2]
        if host.startswith((".", "/")):
            yield (DEPLOY / host).resolve(), container


def _mount_for(service: dict, container_path: str) -> Path:
    for host, container in _mounts(service):
        if container_path == container or container_path.startswith(container.rstrip("/") + "/"):
            return host / Path(container_path).relative_to(container)
    raise AssertionError(f"{container_path} is not mounted")


def test_all_yaml_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 7
    for f in files:
        assert isinstance(load(f), dict), f


def test_compose_structure(compose):
    services = compose["services"]
    assert {"otel-collector", "prometheus", "grafana", "tempo", "alertmanager"} <= set(services)
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)
        for host, _ in _mounts(svc):
            assert host.exists(), f"{name}: mounted {host} missing"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+", str(port)), (name, port)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose.get("volumes", {}), (name, src)
    assert "contrib" in services["otel-collector"]["image"]
    ports = {p.split(":")[-1] for p in services["otel-collector"]["ports"]}
    assert {"4317", "4318"} <= ports


def test_compose_commands_point_at_mounted_configs(compose):
    s = compose["services"]
    col = next(a for a in s["otel-collector"]["command"] if a.startswith("--config="))
    assert _mount_for(s["otel-collector"], col.split("=", 1)[1]) == COLLECTOR.resolve()
    prom = next(a for a in s["prometheus"]["command"] if a.startswith("--config.file="))
    assert _mount_for(s["prometheus"], prom.split("=", 1)[1]) == PROMETHEUS.resolve()
    tempo = next(a for a in s["tempo"]["command"] if a.startswith("-config.file="))
    assert _mount_for(s["tempo"], tempo.split("=", 1)[1]) == TEMPO.resolve()
    assert _mount_for(s["grafana"], "/etc/grafana/provisioning") == PROVISIONING.resolve()
    am = next(a for a in s["alertmanager"]["command"] if a.startswith("--config.file="))
    assert _mount_for(s["alertmanager"], am.split("=", 1)[1]) == ALERTMANAGER.resolve()


def test_prometheus_sends_alerts_to_the_alertmanager_service(compose):
    """alerting: points at the compose Alertmanager, on the port it listens on."""
    (am,) = load(PROMETHEUS)["alerting"]["alertmanagers"]
    (static,) = am["static_configs"]
    (target,) = static["targets"]
    host, port = target.split(":")
    svc = compose["services"][host]
    assert any(str(p).split(":")[-1] == port for p in svc["ports"]), (target, svc["ports"])
    assert host in compose["services"]["prometheus"]["depends_on"]


def test_collector_config_references_existing_components():
    cfg = load(COLLECTOR)
    service = cfg["service"]
    for ext in service.get("extensions", []):
        assert ext in cfg.get("extensions", {}), ext
    pipelines = service["pipelines"]
    assert "metrics" in pipelines
    for name, p in pipelines.items():
        assert p["receivers"] and p["exporters"], name
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                assert comp in (cfg.get(kind) or {}), f"pipeline {name}: {kind} {comp} undefined"
    used = {c for p in pipelines.values() for k in ("receivers", "processors", "exporters") for c in p.get(k, [])}
    for kind in ("receivers", "processors", "exporters"):
        for comp in cfg.get(kind, {}):
            assert comp in used, f"{kind} {comp} defined but unused"
        for comp in cfg.get(kind, {}):
            assert re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?", comp), comp
    assert "prometheus" in pipelines["metrics"]["exporters"]
    prom = cfg["exporters"]["prometheus"]
    # names.py assumes the default suffixing: never turn it off here
    assert prom.get("add_metric_suffixes", True) is True
    assert prom.get("translation_strategy", "UnderscoreEscapingWithSuffixes") == "UnderscoreEscapingWithSuffixes"
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")


def test_collector_exporters_reach_compose_services(compose):
    cfg = load(COLLECTOR)
    services = compose["services"]
    for name, exp in cfg["exporters"].items():
        endpoint = exp.get("endpoint", "")
        host = endpoint.split("://")[-1].split(":")[0]
        if host not in ("0.0.0.0", "localhost", ""):
            assert host in services, (name, endpoint)


def test_prometheus_scrapes_collector_with_honor_labels():
    cfg = load(PROMETHEUS)
    collector_port = load(COLLECTOR)["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["otel-collector"]
    assert job["honor_labels"] is True  # keeps job = service.name
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"otel-collector:{collector_port}"]
    assert cfg["rule_files"] == ["rules/*.yaml"]


def test_prometheus_rules_mount(compose):
    svc = compose["services"]["prometheus"]
    rules_dir = _mount_for(svc, "/etc/prometheus/rules")
    assert (rules_dir / "llm-stream-alerts.yaml").exists()
    # the glob in rule_files loads the recording rules too (the fleet dashboard reads them)
    assert sorted(p.name for p in rules_dir.glob("*.yaml")) == [
        "llm-stream-alerts.yaml", "llm-stream-recording-rules.yaml"]


def test_promtool_check_config_with_rules(promtool, tmp_path):
    """promtool check config, with the rule files at the path the container sees."""
    shutil.copy(PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "dashboards" / "alerts", tmp_path / "rules")
    r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SUCCESS: 4 rules found" in out  # llm-stream-alerts.yaml
    assert f"SUCCESS: {len(recording.rules())} rules found" in out  # llm-stream-recording-rules.yaml
    assert "llm-stream-recording-rules.yaml" in out


def test_promtool_check_config_in_place(promtool):
    r = subprocess.run([promtool, "check", "config", str(PROMETHEUS)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_datasources(compose):
    doc = load(PROVISIONING / "datasources" / "datasources.yaml")
    assert doc["apiVersion"] == 1
    ds = {d["uid"]: d for d in doc["datasources"]}
    prom = ds[thresholds.GRAFANA_PROMETHEUS_UID]
    assert prom["type"] == "prometheus" and prom["isDefault"] is True
    services = compose["services"]
    for d in ds.values():
        host = d["url"].split("://")[1].split(":")[0]
        assert host in services, d["url"]
    assert prom["url"].endswith(":9090")
    assert re.fullmatch(r"\d+s", prom["jsonData"]["timeInterval"])
    assert prom["jsonData"]["timeInterval"] == load(PROMETHEUS)["global"]["scrape_interval"]
    for dest in prom["jsonData"].get("exemplarTraceIdDestinations", []):
        assert dest["datasourceUid"] in ds
    assert ds["tempo"]["url"].endswith(":" + str(load(TEMPO)["server"]["http_listen_port"]))


def test_grafana_dashboard_provider_points_at_dashboards(compose):
    doc = load(PROVISIONING / "dashboards" / "dashboards.yaml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    host = _mount_for(compose["services"]["grafana"], provider["options"]["path"])
    assert host == (ROOT / "dashboards").resolve()
    found = sorted(p.name for p in host.glob("*.json"))
    assert found == ["llm-streams-fleet.json", "llm-streams-model.json", "llm-streams-overview.json"]
    for f in found:
        dash = json.loads((host / f).read_text())
        assert dash["uid"] and dash["title"]
        assert dash.get("id") is None  # file provisioning: no database id
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _mount_for(compose["services"]["grafana"], home).exists()


def test_grafana_alerting_provisioning_structure():
    files = sorted((PROVISIONING / "alerting").glob("*.yaml"))
    assert [f.name for f in files] == ["llm-stream-alerts.yaml"]
    doc = load(files[0])
    assert doc["apiVersion"] == 1
    for group in doc["groups"]:
        assert {"orgId", "name", "folder", "interval", "rules"} <= set(group)
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for", "labels", "annotations",
                    "noDataState", "execErrState"} <= set(rule)
            for q in rule["data"]:
                assert {"refId", "datasourceUid", "model", "relativeTimeRange"} <= set(q)
                assert q["model"]["refId"] == q["refId"]


def test_tempo_config():
    cfg = load(TEMPO)
    otlp = cfg["distributor"]["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "0.0.0.0:4317"
    collector = load(COLLECTOR)
    assert collector["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"
    assert cfg["storage"]["trace"]["backend"] == "local"
