"""Alert delivery end to end: traffic -> Prometheus rules -> Alertmanager -> webhook.

One run for the module, all on 127.0.0.1 with free ports:

- two instrumented processes (``python -m llm_stream_otel.demo.phases``),
  each its own scrape job / service: ``checkout`` (busy, half of its streams
  truncated) and ``nightly-batch`` (quiet: a few streams, also half
  truncated);
- Prometheus (1 s scrapes and evaluations) with the bundled rules in their
  fast variant (:func:`alerts.fast_alerts`: windows / 20, ``for:`` / 200,
  same thresholds, guards and texts) sending to
- a real Alertmanager running ``deploy/alertmanager/alertmanager.yml`` (only
  the webhook URLs and the group timers replaced) that posts to
- a loopback webhook receiver.

The busy service pages, its fix-rate alert is inhibited meanwhile, the quiet
service never pages (volume guard), and when ``checkout`` turns healthy the
page resolves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any, Dict, List

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install pyyaml)")

from tools.dashboards import alerts  # noqa: E402
from tools.servers import fleet  # noqa: E402
from tools.servers import prometheus as harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AM_CONFIG = os.path.join(ROOT, "deploy", "alertmanager", "alertmanager.yml")
BUSY, QUIET = "checkout", "nightly-batch"
TRUNCATION, FIX_RATE = "LLMStreamTruncationRateHigh", "LLMStreamFixRateLow"
FAST = {a.name: a for a in alerts.fast_alerts()}


class Traffic:
    """One ``llm_stream_otel.demo.phases`` process: a service whose mix we switch."""

    def __init__(self, service: str, *args: str) -> None:
        self.service, self.port = service, harness.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
        env.update(OTEL_SERVICE_NAME=service, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_stream_otel.demo.phases", "--prometheus-port", str(self.port), *args],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True, **harness._popen_extra(),
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def mix(self, name: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"mix {name}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # EOF: the process finishes its streams and exits
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            harness._stop_process(self.proc)


def _am_config(hook_url: str) -> str:
    """The shipped routing, with our receiver and second-scale group timers."""
    doc = yaml.safe_load(open(AM_CONFIG, encoding="utf-8"))
    for receiver in doc["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = hook_url + "/" + receiver["name"]
    doc["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return yaml.safe_dump(doc, sort_keys=False)


def _alerts_in(payload: Dict[str, Any], name: str, job: str, status: str) -> List[Dict[str, Any]]:
    return [a for a in payload.get("alerts", [])
            if a["labels"].get("alertname") == name and a["labels"].get("job") == job and a["status"] == status]


@pytest.fixture(scope="module")
def delivery(tmp_path_factory, require):
    require("prometheus (on PATH)", harness.prometheus_binary() is not None, "apt-get install -y prometheus")
    require("alertmanager (on PATH)", fleet.find_binary(fleet.ALERTMANAGER_BINARIES) is not None,
             "apt-get install -y prometheus-alertmanager (.ci/run does)")
    tmp = tmp_path_factory.mktemp("delivery")
    rules = tmp / "llm-stream-alerts.fast.yaml"
    rules.write_text(alerts.render_yaml(alerts.prometheus_rules(alerts.fast_alerts())), encoding="utf-8")
    started = time.monotonic()
    out: Dict[str, Any] = {"timings": {}}
    busy = Traffic(BUSY, "--mix", "faulty", "--concurrency", "2")
    quiet = Traffic(QUIET, "--mix", "faulty", "--concurrency", "1", "--pause", "1.5")
    try:
        with fleet.WebhookReceiver() as hook, \
                fleet.Alertmanager(tmp / "am", _am_config(hook.url)) as am, \
                fleet.FleetPrometheus(tmp / "prom", {BUSY: busy.target, QUIET: quiet.target},
                                      rule_files=[rules], alertmanager=am.address) as prom:
            out.update(hook=hook, am=am, prom=prom)
            out["firing"] = hook.wait_for(lambda p: _alerts_in(p, TRUNCATION, BUSY, "firing"), timeout=90)
            assert out["firing"], (f"no {TRUNCATION} delivered in 90 s (traffic exit codes "
                                   f"{busy.proc.poll()}, {quiet.proc.poll()}):\n{hook.payloads}\n"
                                   f"Prometheus: {prom.alerts()}\n{prom.log()}\nAlertmanager: {am.log()}")
            out["timings"]["firing"] = time.monotonic() - started
            # while the page fires: the fix-rate alert reaches Alertmanager and is held back
            deadline, out["am_fix_rate"] = time.monotonic() + 30, []
            while time.monotonic() < deadline and not any(
                    a["status"]["state"] == "suppressed" for a in out["am_fix_rate"]):
                out["am_fix_rate"] = [a for a in am.alerts()
                                      if a["labels"]["alertname"] == FIX_RATE and a["labels"]["job"] == BUSY]
                time.sleep(0.5)
            # the quiet service, right now: truncating above the threshold, but under the guard
            out["quiet_value"] = prom.query(FAST[TRUNCATION].value)
            out["quiet_guard"] = prom.query(FAST[TRUNCATION].guard.rsplit(">=", 1)[0])
            busy.mix("healthy")
            healthy_at = time.monotonic()
            out["resolved"] = hook.wait_for(lambda p: _alerts_in(p, TRUNCATION, BUSY, "resolved"), timeout=90)
            out["timings"]["resolved_after_healthy"] = time.monotonic() - healthy_at
            out["timings"]["total"] = time.monotonic() - started
            yield out
    finally:
        busy.stop()
        quiet.stop()


def test_truncation_alert_is_delivered_with_labels_and_annotations(delivery):
    payload = delivery["firing"]
    assert payload["path"] == "/llm-streams-page"  # the severity=page route
    assert payload["groupLabels"] == {"job": BUSY}  # grouped by service
    (alert,) = _alerts_in(payload, TRUNCATION, BUSY, "firing")
    rule = FAST[TRUNCATION]
    labels = alert["labels"]
    assert labels == {"alertname": TRUNCATION, "job": BUSY, "gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-demo-mini",
                      "server_address": "127.0.0.1", "severity": "page"}
    ann = alert["annotations"]
    assert ann["runbook_url"] == rule.runbook_url() and ann["runbook_url"].endswith("#llmstreamtruncationratehigh")
    # "43.48% of LLM streams truncated for openai gpt-demo-mini on 127.0.0.1 (job checkout)"
    pct, rest = ann["summary"].split("% ", 1)
    assert rest == f"of LLM streams truncated for openai gpt-demo-mini on 127.0.0.1 (job {BUSY})", ann["summary"]
    assert 25 <= float(pct) <= 75, ann["summary"]  # the faulty mix truncates half the streams
    assert "threshold 5%" in ann["description"] and "at least 20 streams" in ann["description"]
    assert f":{delivery['prom'].port}/graph?g0.expr=" in alert["generatorURL"]
    print(json.dumps(payload, indent=2))  # shown with -s: the delivered webhook body


def test_fix_rate_alert_is_inhibited_while_the_page_fires(delivery):
    held = delivery["am_fix_rate"]
    assert held, "LLMStreamFixRateLow never reached Alertmanager (no retries recover the faulty mix)"
    assert any(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in held), held
    # no fix-rate notification for the service until the page had ended; after it, the
    # warning may follow (its 45 s window still holds the unrecovered truncations)
    (page,) = _alerts_in(delivery["resolved"], TRUNCATION, BUSY, "resolved")
    page_ended = datetime.fromisoformat(page["endsAt"].replace("Z", "+00:00")).timestamp()
    for payload in delivery["hook"].payloads:
        if _alerts_in(payload, FIX_RATE, BUSY, "firing"):
            assert payload["received_at"] >= page_ended, (page, payload)


def test_volume_guard_keeps_the_quiet_service_from_paging(delivery):
    rule = FAST[TRUNCATION]
    value = {s["metric"]["job"]: float(s["value"][1]) for s in delivery["quiet_value"]}
    streams = {s["metric"]["job"]: float(s["value"][1]) for s in delivery["quiet_guard"]}
    # the quiet service truncates far above the threshold, with too few streams to page
    assert value[QUIET] > rule.threshold, value
    assert 0 < streams[QUIET] < rule.config.min_events <= streams[BUSY], streams
    for payload in delivery["hook"].payloads:
        assert not _alerts_in(payload, TRUNCATION, QUIET, "firing"), payload
        if payload["path"] == "/llm-streams-page":
            assert payload["groupLabels"] == {"job": BUSY}, payload


def test_page_resolves_when_traffic_turns_healthy(delivery):
    payload = delivery["resolved"]
    assert payload is not None, delivery["hook"].payloads
    (alert,) = _alerts_in(payload, TRUNCATION, BUSY, "resolved")
    assert payload["status"] == "resolved" and alert["endsAt"] > alert["startsAt"]
    # resolved within the fast window (15 s) plus scrape/evaluation/grouping delays
    assert delivery["timings"]["resolved_after_healthy"] < 45, delivery["timings"]
    assert delivery["timings"]["total"] < 120, delivery["timings"]


def test_shipped_alertmanager_config_passes_amtool(require):
    amtool = fleet.find_binary(("amtool",))
    require("amtool (on PATH)", amtool is not None, "apt-get install -y prometheus-alertmanager (.ci/run does)")
    r = subprocess.run([amtool, "check-config", AM_CONFIG], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    doc = yaml.safe_load(open(AM_CONFIG, encoding="utf-8"))
    assert doc["route"]["group_by"] == ["job"]
    (inhibit,) = doc["inhibit_rules"]
    assert inhibit["source_matchers"] == [f'alertname="{TRUNCATION}"']
    assert inhibit["target_matchers"] == [f'alertname="{FIX_RATE}"']
    assert inhibit["equal"] == ["job", "gen_ai_request_model", "server_address"]


def test_fast_variant_only_compresses_time():
    for slow, fast in zip(alerts.ALERTS, alerts.fast_alerts()):
        assert (fast.name, fast.op, fast.threshold, fast.config.severity, fast.config.min_events) == (
            slow.name, slow.op, slow.threshold, slow.config.severity, slow.config.min_events)
        assert alerts._seconds(slow.config.window) == 20 * float(fast.config.window.rstrip("s"))
        assert fast.prometheus_expr() == slow.prometheus_expr().replace(
            f"[{slow.config.window}]", f"[{fast.config.window}]")
