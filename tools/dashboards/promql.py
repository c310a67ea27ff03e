"""Small PromQL builders shared by the dashboards and the alert rules."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

from llm_stream_otel import series as n

#: Label filters of the dashboards' template variables.
DASHBOARD_FILTERS = {
    n.SERVICE_LABEL: "=~$job",
    n.PROVIDER: "=~$provider",
    n.MODEL: "=~$model",
    n.SERVER: "=~$server",
}

#: The labels alerts (and per-model panels) group by: an alert names its provider
#: (openai, anthropic, gcp.gemini, ...) beside the model, so one rule serves every provider.
ALERT_BY = (n.SERVICE_LABEL, n.PROVIDER, n.MODEL, n.SERVER)


def selector(metric: str, matchers: Optional[Mapping[str, str]] = None, **eq: str) -> str:
    """``metric{a=~"$x", b="v"}``.

    ``matchers`` values start with the operator (``=~$job``, ``!=""``); ``eq``
    are plain equality matchers.
    """
    parts = []
    for key, spec in (matchers or {}).items():
        for op in ("=~", "!~", "!=", "="):
            if spec.startswith(op):
                parts.append(f'{key}{op}"{spec[len(op):]}"')
                break
        else:  # pragma: no cover - programming error
            raise ValueError(f"matcher needs an operator: {key}{spec}")
    parts += [f'{k}="{v}"' for k, v in eq.items()]
    return metric + ("{" + ", ".join(parts) + "}" if parts else "")


def by(labels: Sequence[str]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def sum_rate(metric: str, window: str, labels: Sequence[str] = (), filters=None, **eq: str) -> str:
    return f"sum{by(labels)} (rate({selector(metric, filters, **eq)}[{window}]))"


def sum_increase(metric: str, window: str, labels: Sequence[str] = (), filters=None, **eq: str) -> str:
    return f"sum{by(labels)} (increase({selector(metric, filters, **eq)}[{window}]))"


def zero_filled(num: str, den: str) -> str:
    """``num``, with 0 for every label set ``den`` has and ``num`` lacks.

    A counter series only exists once incremented: a model that never
    truncated has no truncated series (and a fix rate with no recovery at
    all has no recoveries series), which would turn 0% into "no data".
    """
    return f"(\n  {num}\nor\n  0 * {den}\n)"


def ratio(num: str, den: str, labels: Sequence[str] = ()) -> str:
    """``num / den`` that is 0 (not absent) where ``num`` has no series."""
    if labels:
        return f"{zero_filled(num, den)}\n/\n{den}"
    return f"({num} or vector(0))\n/\n{den}"


def quantile(q: float, histogram_base: str, window: str, labels: Iterable[str] = (), filters=None, **eq: str) -> str:
    inner = sum_rate(histogram_base + "_bucket", window, [*labels, "le"], filters, **eq)
    return f"histogram_quantile({q}, {inner})"
