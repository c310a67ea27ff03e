"""A traffic script scraped by a real Prometheus, then ``llm-stream-otel diagnose`` on it.

Shared by the diagnose end-to-end tests: the script (``python SCRIPT PORT
...``) serves /metrics on PORT, sends its streams, prints ``holding:`` and
keeps /metrics up; the dashboards harness runs Prometheus (1 s scrapes) and
waits until it has the script's final numbers.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tools.servers import prometheus as harness

_CI = {"true", "1", "yes"}


def require_prometheus() -> None:
    """Skip without ``prometheus`` on PATH; fail on CI=true."""
    if harness.prometheus_binary() is None:
        if os.environ.get("CI", "").strip().lower() in _CI:
            pytest.fail("CI=true and prometheus is not on PATH", pytrace=False)
        pytest.skip("prometheus is not on PATH (apt-get install -y prometheus)")


class ScriptTraffic(harness.Demo):
    """``python SCRIPT PORT *args`` instead of the demo, with the demo's process handling."""

    def __init__(self, script: Path, *args: str) -> None:
        super().__init__(duration=0)
        self.args = [sys.executable, str(script), str(self.port), *args]


@contextmanager
def scraped(workdir: Path, script: Path, job: str, *args: str, timeout: float = 60,
            frozen: float = 0.0) -> Iterator[harness.Run]:
    """Prometheus scraping ``script`` until it holds and Prometheus has it all; yields the run.

    ``frozen`` > 0: once the traffic is over, SIGSTOP the script for that long
    (its scrapes time out, Prometheus marks its series stale), then SIGCONT:
    the gap a loaded app or a slow network leaves in the data.
    """
    traffic = ScriptTraffic(script, *args)
    with harness.Prometheus(workdir, target=f"127.0.0.1:{traffic.port}", job=job, rule_files=[]) as prometheus:
        with traffic:
            traffic.wait_holding(timeout=timeout)
            if frozen and traffic.proc is not None:
                traffic.proc.send_signal(signal.SIGSTOP)
                time.sleep(frozen)
                traffic.proc.send_signal(signal.SIGCONT)
            harness.wait_for_final_scrape(prometheus, traffic, job)
            yield harness.Run(prometheus, traffic, job, (traffic.started_at or time.time()) - 2, time.time(), 0.0)


def _script() -> str:
    found = shutil.which("llm-stream-otel", path=os.path.dirname(sys.executable))
    assert found, "the llm-stream-otel console script is not installed next to this python"
    return found


def diagnose(run: harness.Run, *extra: str) -> subprocess.CompletedProcess:
    """The installed ``llm-stream-otel diagnose`` over the whole run."""
    since = f"{math.ceil(time.time() - run.start) + 5}s"
    return subprocess.run([_script(), "diagnose", "--prometheus", run.url, "--job", run.job, "--since", since, *extra],
                          capture_output=True, text=True, timeout=60)
