"""The PromQL of the dashboards and alert rules, ready to run against Prometheus.

For the end-to-end test (a real Prometheus scraping an instrumented app) and
for the static checks of ``tests/dashboards``:

- :func:`all_queries` -> ``[(panel title, PromQL)]`` of every dashboard panel,
  with Grafana template variables substituted;
- :func:`alert_expressions` -> ``[(alert name, PromQL)]`` of a Prometheus rule
  file (or of a Grafana alert provisioning file);
- :func:`metric_names` -> the metric names a PromQL expression selects.

Standard library only, except PyYAML for :func:`alert_expressions`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

#: Values that make every dashboard query runnable as a plain PromQL query:
#: every filter matches everything, intervals are fixed.
DEFAULT_VARIABLES: Dict[str, str] = {
    "datasource": "prometheus",
    "job": ".*",
    "provider": ".*",
    "model": ".*",
    "server": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}

_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def substitute(expr: str, variables: Optional[Mapping[str, str]] = None) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``).

    ``variables`` is merged over :data:`DEFAULT_VARIABLES`; an unknown
    variable raises ``KeyError`` (so a typo cannot pass silently).
    """
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def repl(m: "re.Match[str]") -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown template variable ${name} in: {expr}")
        return values[name]

    return _VAR.sub(repl, expr)


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included; rows themselves too."""
    for panel in dashboard.get("panels", []):
        yield panel
        for inner in panel.get("panels", []) or []:
            yield inner


def all_queries(
    dashboards: Union[Mapping[str, Mapping[str, Any]], Mapping[str, Any]],
    variables: Optional[Mapping[str, str]] = None,
) -> List[Tuple[str, str]]:
    """``[(panel title, PromQL)]`` for every query of every panel.

    ``dashboards`` is ``build_all()``'s ``{file name: dashboard}`` (or one
    dashboard).  Hidden queries are skipped.  ``variables`` overrides
    :data:`DEFAULT_VARIABLES`, e.g. ``{"model": "gpt-4o"}``.
    """
    if "panels" in dashboards:  # a single dashboard
        dashboards = {"": dashboards}
    out: List[Tuple[str, str]] = []
    for dash in dashboards.values():
        for panel in iter_panels(dash):
            for target in panel.get("targets", []) or []:
                expr = target.get("expr")
                if expr and not target.get("hide"):
                    out.append((panel.get("title", ""), substitute(expr, variables)))
    return out


def alert_expressions(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """``[(alert or record name, PromQL)]`` of a rule file.

    Reads a Prometheus rule file (``groups[].rules[].alert|record/expr``) or
    a Grafana alert provisioning file (``groups[].rules[].title`` with the
    ``expr`` of each non-expression query in ``data``).
    """
    import yaml

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    out: List[Tuple[str, str]] = []
    for group in doc.get("groups", []) or []:
        for rule in group.get("rules", []) or []:
            if "expr" in rule:
                out.append((rule.get("alert") or rule.get("record"), rule["expr"]))
                continue
            for query in rule.get("data", []) or []:
                model = query.get("model", {}) or {}
                if query.get("datasourceUid") != "__expr__" and model.get("expr"):
                    out.append((rule.get("title", ""), model["expr"]))
    return out


_FUNCTIONS_AND_KEYWORDS = {
    # aggregation operators and keywords
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w])(\s*\()?")


def metric_names(expr: str) -> List[str]:
    """Metric names selected by a PromQL expression (sorted, unique).

    A light lexer, enough for the expressions of this project: it drops
    strings, label matchers, ranges and ``by (...)``-style label lists, then
    keeps identifiers that are neither functions (followed by ``(``) nor
    keywords.  ``{__name__="x"}`` selectors are not supported.
    """
    text = _STRINGS.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    found = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _FUNCTIONS_AND_KEYWORDS:
            continue
        found.add(name)
    return sorted(found)


def referenced_metrics(pairs: Iterable[Tuple[str, str]]) -> Dict[str, List[str]]:
    """``{metric name: [titles of the queries using it]}``."""
    out: Dict[str, List[str]] = {}
    for title, expr in pairs:
        for name in metric_names(expr):
            out.setdefault(name, []).append(title)
    return out
