"""The ``llm-stream-otel`` command: demo, fault-server, dashboards export, doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

_EXAMPLES_DEMO = """examples:
  llm-stream-otel demo                          # 100 logical calls, live table, summary
  llm-stream-otel demo --duration 120 --hold    # 2 minutes, then keep /metrics up for Prometheus
  llm-stream-otel demo --console --streams 5    # print every span
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 llm-stream-otel demo   # feed deploy/ stack
"""
_EXAMPLES_SERVER = """examples:
  llm-stream-otel fault-server --port 8000 --mix 'reset_mid_chunk=0.1,missing_terminator=0.1,none=0.8'
  curl -N localhost:8000/v1/chat/completions -H 'X-Fault: stall;seconds=3' \\
       -d '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
faults: none length content_filter tool_calls reset_mid_chunk reset_between cut_mid_chunk
        missing_terminator error_event stall hang http_500 http_429 http_503 response_failed
keys:   chunks= delay= first_delay= after= first= usage= seconds=
"""
_EXAMPLES_DASHBOARDS = """examples:
  llm-stream-otel dashboards export ./grafana   # *.json dashboards + alerts/*.yaml rules
"""
_EXAMPLES_DOCTOR = """examples:
  llm-stream-otel doctor
  OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD=2 llm-stream-otel doctor
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-stream-otel",
        description="OpenTelemetry for LLM streams that get cut: demo, test server, dashboards, diagnostics.",
        epilog="Instrument an app with no code change: opentelemetry-instrument python app.py",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    demo = commands.add_parser("demo", help="run real fault-injected traffic and show the numbers", epilog=_EXAMPLES_DEMO, formatter_class=fmt)
    amount = demo.add_mutually_exclusive_group()
    amount.add_argument("--streams", type=int, default=None, help="logical calls to make (default 100)")
    amount.add_argument("--duration", type=float, default=None, help="run for this many seconds instead")
    demo.add_argument("--concurrency", type=int, default=6, help="calls in flight at once (default 6)")
    demo.add_argument("--prometheus-port", type=int, default=9464, help="serve /metrics here (default 9464, 0 = off)")
    demo.add_argument("--console", action="store_true", help="print every span to the console")
    demo.add_argument("--seed", type=int, default=None, help="make the traffic mix repeatable")
    demo.add_argument("--stall-threshold", type=float, default=1.0, help="seconds between chunks that count as a stall (default 1)")
    demo.add_argument("--hold", action="store_true", help="after the traffic, keep /metrics up until Ctrl-C")
    demo.add_argument("--plain", action="store_true", help="no live table (for logs and CI)")

    server = commands.add_parser("fault-server", help="run the fault-injecting OpenAI-compatible server", epilog=_EXAMPLES_SERVER, formatter_class=fmt)
    from .demo.fault_server import add_arguments

    add_arguments(server)

    dashboards = commands.add_parser("dashboards", help="bundled Grafana dashboards and alert rules", epilog=_EXAMPLES_DASHBOARDS, formatter_class=fmt)
    dash_commands = dashboards.add_subparsers(dest="dashboards_command", metavar="ACTION")
    export = dash_commands.add_parser("export", help="write the dashboards and alert rules to DIR", epilog=_EXAMPLES_DASHBOARDS, formatter_class=fmt)
    export.add_argument("dir", type=Path, help="target folder (created if missing)")

    commands.add_parser("doctor", help="versions, entry point, patched methods, effective configuration", epilog=_EXAMPLES_DOCTOR, formatter_class=fmt)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo.run import DemoOptions, run_demo

        streams = args.streams if args.streams is not None else (None if args.duration else 100)
        return run_demo(
            DemoOptions(
                streams=streams,
                duration=args.duration,
                concurrency=args.concurrency,
                prometheus_port=args.prometheus_port,
                console=args.console,
                seed=args.seed,
                stall_threshold=args.stall_threshold,
                hold=args.hold,
                plain=args.plain or not sys.stdout.isatty(),
            )
        )
    if args.command == "fault-server":
        from .demo.fault_server import run_from_args

        return run_from_args(args)
    if args.command == "dashboards":
        if args.dashboards_command != "export":
            parser.parse_args(["dashboards", "--help"])
        from .bundled import export as export_bundled

        try:
            written = export_bundled(args.dir)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
        return 0
    if args.command == "doctor":
        from .doctor import report

        print(report())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
