"""The ``llm-stream-otel`` command: demo, fault-server, dashboards export, deploy export, doctor."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

_EXAMPLES_DEMO = """examples:
  llm-stream-otel demo                          # 100 logical calls, live table, summary
  llm-stream-otel demo --duration 120 --hold    # 2 minutes, then keep /metrics up for Prometheus
  llm-stream-otel demo --console --streams 5    # print every span
  llm-stream-otel demo --gemini                 # Gemini and Vertex AI traffic too (google-genai)
  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 llm-stream-otel demo   # feed deploy/ stack
"""
_EXAMPLES_SERVER = """examples:
  llm-stream-otel fault-server --port 8000 --mix 'reset_mid_chunk=0.1,missing_terminator=0.1,none=0.8'
  curl -N localhost:8000/v1/chat/completions -H 'X-Fault: stall;seconds=3' \\
       -d '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

It speaks OpenAI (/v1/chat/completions, /v1/completions, /v1/responses) and
Anthropic (/v1/messages; point the anthropic client's base_url at the server
root, without /v1). A request's fault comes from its X-Fault header
('name;key=value;...'), else --mix, else --fault. Faults:
  none                answer normally (finish_reason stop, then [DONE])
  length              answer ends with finish_reason length
  content_filter      answer ends with finish_reason content_filter
  tool_calls          a tool call instead of text, finish_reason tool_calls
  reset_mid_chunk     TCP reset (RST) in the middle of an event after `after` chunks
  reset_between       TCP reset between two events after `after` chunks
  cut_mid_chunk       clean close (FIN) in the middle of an event
  missing_terminator  clean close after `after` chunks: no finish_reason, no [DONE]
  error_event         an SSE error event after `after` chunks, then close
                      (Anthropic: `event: error`, type=overloaded_error by default)
  response_failed     Responses API only: a response.failed event, then close
  overloaded          Anthropic only: HTTP 529 overloaded_error instead of a stream
  stall               pause `seconds` (default 1) after `after` chunks, then finish
  hang                send nothing more for `seconds` (default 30) after `after` chunks
  http_500, http_429, http_503   that HTTP status instead of a stream
  prompt_blocked      Gemini API only: one chunk with promptFeedback.blockReason
Paths: the OpenAI API under /v1, and the Gemini API's
  /{version}/[projects/P/locations/L/publishers/google/]models/M:streamGenerateContent
  (google-genai: http_options base_url = the server root)
Keys:
  chunks=N            content chunks in the answer (default --chunks)
  delay=S             seconds between chunks (default --chunk-delay)
  first_delay=S       seconds before the first chunk
  after=N             chunks sent before the fault (default chunks/2)
  seconds=S           length of a stall or hang
  usage=1             send a usage chunk (also sent when the request asks
                      with stream_options={"include_usage": true})
  retry_after_ms=MS   the retry-after-ms header of http_429/http_503
  type=WORD           Anthropic error_event: the error type (overloaded_error, api_error)
  cache_read=N        Anthropic: cache_read_input_tokens in the usage
  cache_creation=N    Anthropic: cache_creation_input_tokens in the usage
  first=K             fault only the first K requests with the same prompt;
                      later ones get `none`. Counted per prompt (path + messages)
                      over the server's lifetime: restart the server or change
                      the prompt to be faulted again.
"""
_EXAMPLES_DASHBOARDS = """examples:
  llm-stream-otel dashboards export ./grafana   # *.json dashboards + alerts/*.yaml rules
"""
_EXAMPLES_DEPLOY = """examples:
  llm-stream-otel deploy export ./stack && cd ./stack/deploy && docker compose up -d
      # writes stack/deploy/ (compose, Collector, Prometheus, Tempo, Grafana
      # provisioning) and stack/dashboards/ (dashboards + alert rules it mounts)
"""
_EXAMPLES_DIAGNOSE = """examples:
  llm-stream-otel diagnose --prometheus http://localhost:9090
  llm-stream-otel diagnose --prometheus http://prom:9090 --job my-app --since 6h --json

Reads llm_stream_outcomes_total, llm_stream_idle_before_end_seconds, the chunk
gap histogram and llm_stream_recoveries_total and names, per server address,
the probable causes of cut streams with evidence, share and fix.
Exit 0 on success, 1 when Prometheus is unreachable, 2 on bad arguments.
"""
_EXAMPLES_DOCTOR = """examples:
  llm-stream-otel doctor
  OTEL_INSTRUMENTATION_LLM_STREAM_STALL_THRESHOLD=2 llm-stream-otel doctor
"""


def _number(kind: type, minimum: float, maximum: float = float("inf"), what: str = "") -> Callable[[str], Any]:
    """An argparse ``type=`` that rejects values out of range with a usage error (exit 2)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not minimum <= value <= maximum or value != value:
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what}")
        return value

    return parse


_COUNT = _number(int, 1, what="must be 1 or more")
_PORT = _number(int, 0, 65535, what="must be a port number, 0 to 65535 (0 = off)")
_SECONDS = _number(float, 1e-9, 1e9, what="must be a positive number of seconds")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90s`` / ``15m`` / ``1h`` / ``2d`` (or plain seconds) -> seconds; usage error otherwise."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    try:
        value = float(t[:-1] if unit else t) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 1h") from None
    if not 1 <= value <= 366 * 86400:
        raise argparse.ArgumentTypeError(f"{text} is out of range: 1s to 366d")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s):// URL")
    return text


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
    amount.add_argument("--streams", type=_COUNT, default=None, help="logical calls to make (default 100)")
    amount.add_argument("--duration", type=_SECONDS, default=None, help="run for this many seconds instead")
    demo.add_argument("--concurrency", type=_COUNT, default=6, help="calls in flight at once (default 6)")
    demo.add_argument("--prometheus-port", type=_PORT, default=9464, help="serve /metrics here (default 9464, 0 = off)")
    demo.add_argument("--console", action="store_true", help="print every span to the console")
    demo.add_argument("--seed", type=int, default=None, help="make the traffic mix repeatable")
    demo.add_argument("--stall-threshold", type=_SECONDS, default=1.0, help="seconds between chunks that count as a stall (default 1)")
    demo.add_argument("--hold", action="store_true", help="after the traffic, keep /metrics up until Ctrl-C")
    demo.add_argument("--plain", action="store_true", help="no live table (for logs and CI)")
    demo.add_argument("--gemini", action="store_true",
                      help="add Gemini and Vertex AI traffic through google-genai (llm-stream-otel[google-genai])")

    server = commands.add_parser("fault-server", help="run the fault-injecting OpenAI-compatible server", epilog=_EXAMPLES_SERVER, formatter_class=fmt)
    from .demo.fault_server import add_arguments

    add_arguments(server)

    dashboards = commands.add_parser("dashboards", help="bundled Grafana dashboards and alert rules", epilog=_EXAMPLES_DASHBOARDS, formatter_class=fmt)
    dash_commands = dashboards.add_subparsers(dest="dashboards_command", metavar="ACTION")
    export = dash_commands.add_parser("export", help="write the dashboards and alert rules to DIR", epilog=_EXAMPLES_DASHBOARDS, formatter_class=fmt)
    export.add_argument("dir", type=Path, help="target folder (created if missing)")

    deploy = commands.add_parser("deploy", help="the bundled docker-compose stack (Collector, Prometheus, Tempo, Grafana)", epilog=_EXAMPLES_DEPLOY, formatter_class=fmt)
    deploy_commands = deploy.add_subparsers(dest="deploy_command", metavar="ACTION")
    deploy_export = deploy_commands.add_parser("export", help="write deploy/ and the dashboards/ it mounts into DIR", epilog=_EXAMPLES_DEPLOY, formatter_class=fmt)
    deploy_export.add_argument("dir", type=Path, help="target folder (created if missing)")

    diag = commands.add_parser("diagnose", help="why streams are cut: probable causes per server, read from Prometheus", epilog=_EXAMPLES_DIAGNOSE, formatter_class=fmt)
    diag.add_argument("--prometheus", required=True, metavar="URL", type=_url, help="Prometheus base URL, e.g. http://localhost:9090")
    diag.add_argument("--job", default=None, help="only this scrape job / service (the `job` label)")
    diag.add_argument("--since", type=_duration, default=3600.0, metavar="DURATION", help="look back this far: 90s, 15m, 1h, 2d (default 1h)")
    diag.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("doctor", help="versions, entry point, patched methods, effective configuration", epilog=_EXAMPLES_DOCTOR, formatter_class=fmt)
    return parser


# Top-level modules of the optional extras -> the extra that brings them.
_EXTRA_OF_MODULE = {
    "openai": "demo",
    "opentelemetry.sdk": "demo",
    "opentelemetry.exporter.prometheus": "demo",
    "prometheus_client": "demo",
    "rich": "demo",
}


def missing_extra_message(exc: ImportError, command: str) -> Optional[str]:
    """``pip install ".[demo]"`` advice when ``exc`` is a module of an extra, else None."""
    name = getattr(exc, "name", None) or ""
    for module, extra in _EXTRA_OF_MODULE.items():
        # ``opentelemetry.exporter`` (a namespace package) is missing when no exporter is installed.
        if name == module or name.startswith(module + ".") or module.startswith(name + "."):
            return (
                f"error: `llm-stream-otel {command}` needs the '{extra}' extra ({name} is not installed): "
                f"pip install 'llm-stream-otel[{extra}]'  (from a clone: pip install '.[{extra}]')"
            )
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except BrokenPipeError:
        # `llm-stream-otel doctor | head -3`: the reader left early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImportError as exc:
        message = missing_extra_message(exc, args.command)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _export(what: str, target: Path) -> int:
    """``dashboards export`` / ``deploy export``: copy the bundled files, list them."""
    from .bundled import export, export_stack

    try:
        written = (export if what == "dashboards" else export_stack)(target)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if what == "deploy":
        print(f"next: cd {target / 'deploy'} && docker compose up -d", file=sys.stderr)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
                gemini=args.gemini,
            )
        )
    if args.command == "fault-server":
        from .demo.fault_server import run_from_args

        return run_from_args(args)
    if args.command in ("dashboards", "deploy"):
        if getattr(args, f"{args.command}_command") != "export":
            parser.parse_args([args.command, "--help"])
        return _export(args.command, args.dir)
    if args.command == "diagnose":
        from .diagnose.command import run

        return run(args.prometheus, args.job, args.since, args.json)
    if args.command == "doctor":
        from .doctor import report

        print(report())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
