"""``llm-stream-otel diagnose``: read, diagnose, print."""

from __future__ import annotations

import sys
import time
from typing import Optional

from .prometheus import PrometheusError, Reader
from .render import as_json, as_text
from .rules import MIN_BROKEN, diagnose


def run(url: str, job: Optional[str], since: float, json_out: bool) -> int:
    at = time.time()
    try:
        data = Reader(url, job, since, at).read()
    except PrometheusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results = diagnose(data)
    where = f"job {job}" if job else "all jobs"
    if json_out:
        print(as_json(results, {"prometheus": url, "job": job, "since_seconds": since, "at": at, "min_broken_streams": MIN_BROKEN}))
    else:
        print(as_text(results, f"llm-stream-otel diagnose: {url}, {where}, last {since:g}s"))
    return 0
