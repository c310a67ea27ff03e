"""The metric attribute sets of a stream, built once per distinct combination and shared.

Why: metric attributes are low-cardinality by design, so the same few sets
come back stream after stream. Building each ending's six dicts anew, and
then having the metrics fast path turn each into a tuple key to find what
it cleaned before, cost about 30,000 instructions an ending (callgrind).
Here each distinct set is built once and the same dict objects are handed
out again, so ``metrics.sdk_fast_path`` finds them by identity.

The dicts are shared by every stream with the same values: nobody may
change them (every user copies before adding: ``{**attributes, ...}``).
Both caches are bounded; when full they start over (the sets are rebuilt
on demand, nothing is lost).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .. import semconv as t

CACHE_LIMIT = 1024


class BaseAttributes:
    """A call's request attributes for metrics (operation, provider, model, server, port), interned."""

    def __init__(self) -> None:
        self._sets: Dict[tuple, Dict[str, Any]] = {}

    def get(self, operation: Any, provider: Any, model: Optional[str], server: Optional[str], port: Any) -> Dict[str, Any]:
        key = (operation, provider, model, server, port)
        found = self._sets.get(key)
        if found is None:
            found = {t.GEN_AI_OPERATION_NAME: operation, t.GEN_AI_PROVIDER_NAME: provider}
            if model:
                found[t.GEN_AI_REQUEST_MODEL] = model
            if server:
                found[t.SERVER_ADDRESS] = server
                if port:
                    found[t.SERVER_PORT] = port
            if len(self._sets) >= CACHE_LIMIT:
                self._sets.clear()
            self._sets[key] = found
        return found


class EndingAttributes:
    """The attribute sets one stream ending records with (see ``record.record_metrics``)."""

    __slots__ = ("base", "values", "duration", "usage_input", "usage_output", "idle", "outcome")

    def __init__(
        self,
        base: Dict[str, Any],
        response_model: Optional[str],
        error: Optional[str],
        outcome: str,
        reason: Optional[str],
        is_retry: bool,
        facts: Tuple[Any, Any, Any],
        cause: Optional[str],
    ) -> None:
        self.base = base  # held: the cache is keyed by its identity
        values = dict(base)
        if response_model:
            values[t.GEN_AI_RESPONSE_MODEL] = response_model
        # Token usage carries no error type (semconv; the series budget, tools/dashboards/cardinality.py):
        # a cut stream's usage so far (Anthropic's message_start, Gemini's running total) is
        # recorded under the plain attributes.
        self.usage_input = {**values, t.GEN_AI_TOKEN_TYPE: "input"}
        self.usage_output = {**values, t.GEN_AI_TOKEN_TYPE: "output"}
        if error:
            values[t.ERROR_TYPE] = error
        self.values = values
        self.duration = {**values, t.OUTCOME: outcome}
        self.idle = {**values, t.TRUNCATION_REASON: reason or t.REASON_OTHER}
        outcome_attrs = {**values, t.OUTCOME: outcome, t.IS_RETRY: is_retry}
        if reason:
            outcome_attrs[t.TRUNCATION_REASON] = reason
        for key, value in zip(_FACT_KEYS, facts):
            if value is not None:
                outcome_attrs[key] = value
        if cause is not None:
            outcome_attrs[t.ERROR_CAUSE] = cause
        self.outcome = outcome_attrs


# The bounded HTTP facts (of http_facts.response_facts / connection_facts) that go on the outcome counter.
_FACT_KEYS = (t.HTTP_RESPONSE_STATUS_CODE, t.HTTP_INTERMEDIARY, t.CONNECTION_REUSED)


def metric_facts(http: Any) -> Tuple[Any, Any, Any]:
    """The outcome counter's HTTP facts, as a key (None: absent; none is ever None when present)."""
    if not http:
        return (None, None, None)
    get = http.get
    return (get(_FACT_KEYS[0]), get(_FACT_KEYS[1]), get(_FACT_KEYS[2]))


class EndingCache:
    """One ``EndingAttributes`` per distinct ending: (base, model, error, outcome, reason, retry, facts, cause)."""

    def __init__(self) -> None:
        self._sets: Dict[tuple, EndingAttributes] = {}

    def get(self, ending: tuple) -> EndingAttributes:
        """``EndingAttributes(*ending)``, built once (the base dict is keyed by its identity)."""
        key = (id(ending[0]), *ending[1:])
        found = self._sets.get(key)
        if found is None or found.base is not ending[0]:
            found = EndingAttributes(*ending)
            if len(self._sets) >= CACHE_LIMIT:
                self._sets.clear()
            self._sets[key] = found
        return found
