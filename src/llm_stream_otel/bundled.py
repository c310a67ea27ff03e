"""Find the dashboards and alert rules that ship with the package.

In a wheel they are under ``llm_stream_otel/_bundled`` (hatch force-include);
in a source checkout or an editable install they are the repo's own
``dashboards/`` and ``deploy/`` folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

_HERE = Path(__file__).resolve().parent


def bundled_root() -> Optional[Path]:
    """The folder holding ``dashboards/`` (and ``deploy/``), or None."""
    for candidate in (_HERE / "_bundled", _HERE.parent.parent):
        if (candidate / "dashboards").is_dir():
            return candidate
    return None


def export(target: Path) -> List[Path]:
    """Copy dashboards (JSON), Prometheus alert rules and Grafana alert provisioning into ``target``."""
    root = bundled_root()
    if root is None:
        raise FileNotFoundError("the bundled dashboards are missing from this installation")
    written: List[Path] = []
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((root / "dashboards").glob("*.json")):
        written.append(Path(shutil.copy2(source, target / source.name)))
    alerts = target / "alerts"
    alerts.mkdir(exist_ok=True)
    for source in sorted((root / "dashboards" / "alerts").glob("*.yaml")):
        written.append(Path(shutil.copy2(source, alerts / source.name)))
    grafana_alerts = root / "deploy" / "grafana" / "provisioning" / "alerting"
    for source in sorted(grafana_alerts.glob("*.yaml")) if grafana_alerts.is_dir() else []:
        written.append(Path(shutil.copy2(source, alerts / f"grafana-{source.name}")))
    return written


def export_stack(target: Path) -> List[Path]:
    """Copy the docker-compose stack: ``target/deploy`` and the ``target/dashboards`` it mounts.

    The compose file mounts ``../dashboards`` (dashboards and alert rules), so
    both folders are written side by side, as in the repository; then
    ``cd target/deploy && docker compose up -d`` works as the README says.
    """
    root = bundled_root()
    if root is None or not (root / "deploy").is_dir():
        raise FileNotFoundError("the bundled deploy/ stack is missing from this installation")
    written: List[Path] = []
    for folder, pattern in (("deploy", "*"), ("dashboards", "*.json"), ("dashboards/alerts", "*.yaml")):
        source_dir = root / folder
        files = source_dir.rglob(pattern) if folder == "deploy" else source_dir.glob(pattern)
        for source in sorted(p for p in files if p.is_file()):
            destination = target / folder / source.relative_to(source_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            written.append(Path(shutil.copy2(source, destination)))
    return written
