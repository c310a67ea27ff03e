"""The provider-neutral core: one stream's state, outcome rules, lifecycle, proxies and recording.

Nothing here imports an LLM SDK. ``monitor`` and ``outcome`` are pure;
``telemetry`` starts a call, ``wrapper`` and ``proxy`` observe it, ``call``
ends it exactly once and ``record`` turns the ending into span and metrics.
"""
