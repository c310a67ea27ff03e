"""Text and JSON output of ``llm-stream-otel diagnose``."""

from __future__ import annotations

import json
from typing import List, Sequence

from .rules import ServerDiagnosis


def as_json(results: Sequence[ServerDiagnosis], meta: dict) -> str:
    return json.dumps({**meta, "servers": [r.as_dict() for r in results]}, indent=2, default=str)


def as_text(results: Sequence[ServerDiagnosis], header: str) -> str:
    lines: List[str] = [header]
    if not results:
        lines.append("no cut or failed streams in this window (no llm_stream_outcomes_total with outcome truncated/failed)")
    for r in results:
        lines.append("")
        lines.append(f"server {r.server}: {r.cuts:g} cut, {r.failures:g} failed")
        if r.note:
            lines.append(f"  {r.note}")
        for i, f in enumerate(r.findings, 1):
            lines.append(f"  {i}. {f.title}: {f.streams:g} streams, {100 * f.share:.0f}% of the broken streams")
            lines.append(f"     evidence: {f.evidence}")
            lines.append(f"     fix: {f.fix}")
    return "\n".join(lines)
