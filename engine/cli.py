"""The `framegraph` command: validate, run and describe graphs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from engine.errors import FramegraphError, GraphConfigError
from engine.metrics import failed_streams, failing_nodes
from engine.plan import GraphPlan, load_plan
from engine.plugins import load_plugins
from engine.progress import report_progress
from engine.runtime import RunOptions, Runtime
from engine.summary_text import summary_text
from operators.urls import scrub

EXIT_FAILED = 1  # the run could not go on: a node's setup failed, a process died, a port was taken
EXIT_INVALID = 2  # the graph (or the command line) is invalid
EXIT_STREAMS_FAILED = 4  # the run ended, but a source failed or a node dropped every item by errors
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear error for 0, negatives and non-numbers)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _log_level_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=default, help="log level (any case)"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framegraph", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a graph file; exit 0, or print every error, exit 2")
    v.add_argument("graph", type=Path)
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    v.add_argument(
        "--connect",
        action="store_true",
        help="also open every source once and set up every operator (servers, models, brokers); "
        "every failure is listed, nothing runs",
    )
    v.add_argument(
        "--timeout-s",
        type=float,
        default=60.0,
        help="--connect: the longest any one source or node may take (an embedded Triton starts in it)",
    )
    v.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its operators can be used (repeatable)",
    )
    r = sub.add_parser("run", help="run a graph until its sources end (or Ctrl-C)")
    r.add_argument("graph", type=Path)
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="replace any graph value, e.g. sources.0.url=clip.mp4 (repeatable)",
    )
    r.add_argument(
        "--max-frames", type=positive_int, default=None, metavar="N", help="stop each stream after N frames"
    )
    r.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="K",
        help="run the graph in K processes, the sources dealt out among them (0: one per core); "
        "per-frame Python work then uses K cores",
    )
    r.add_argument("--output", type=Path, default=Path("out"), help="directory for sink outputs")
    r.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")
    r.add_argument("--progress-interval-s", type=float, default=2.0, help="0 disables progress")
    _log_level_arg(r, "WARNING")
    r.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")
    r.add_argument("--metrics-address", default="127.0.0.1", help="address for --metrics-port")
    r.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its operators can be used (repeatable)",
    )
    sc = sub.add_parser("schema", help="print the JSON Schema of graph files (for editors)")
    sc.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its operators join the schema (repeatable)",
    )
    w = sub.add_parser("worker", help="run a graph as a worker: streams come from a registry, API on a port")
    w.add_argument("graph", type=Path)
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    w.add_argument("--redis", default=os.environ.get("FG_REDIS_URL"), help="registry; none: in memory")
    w.add_argument("--namespace", default="default", help="registry namespace (one per graph)")
    w.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}")
    w.add_argument("--lease-ttl-s", type=positive_seconds, default=5.0)
    w.add_argument(
        "--failed-retry-s",
        type=positive_seconds,
        default=60.0,
        help="a stream whose source failed is handed back and tried again (by any worker) after this long",
    )
    w.add_argument("--api-address", default="127.0.0.1")
    w.add_argument("--api-port", type=int, default=8080)
    w.add_argument("--token-file", default=os.environ.get("FG_API_TOKEN_FILE"), help="bearer token file")
    w.add_argument("--protect-reads", action="store_true", help="reads need the token too")
    w.add_argument("--output", type=Path, default=Path("out"))
    w.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its operators can be used (repeatable)",
    )
    _log_level_arg(w, "INFO")
    w.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="K",
        help="K worker processes sharing the streams through --redis (ids WORKER-ID-i, API on "
        "API-PORT+i; 0: one per core): per-frame Python work then uses K cores",
    )
    s = sub.add_parser("streams", help="list, add or remove streams through a worker's control API")
    s.add_argument("action", choices=["ls", "add", "update", "rm"])
    s.add_argument("stream_id", nargs="?")
    s.add_argument("--api", default=os.environ.get("FG_API_URL", "http://127.0.0.1:8080"))
    s.add_argument("--token", default=os.environ.get("FG_API_TOKEN"))
    s.add_argument("--url", help="with add, update: the stream's URL")
    s.add_argument("--op", help="with add, update: the source operator")
    s.add_argument("--config", default="{}", help="with add, update: the source config as JSON")
    s.add_argument("--json", action="store_true", help="with ls: print the API's JSON, not a table")
    from engine.eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        load_plugins(getattr(args, "plugin", []))
    except FramegraphError as e:
        print(f"framegraph {args.command}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.command == "schema":
        from engine.schema import graph_schema

        print(json.dumps(graph_schema(), indent=2))
        return 0
    if args.command == "streams":
        from engine.streams_client import streams_command

        return streams_command(args)
    if args.command == "eval":
        from engine.eval_cli import command as eval_command

        return eval_command(args)
    try:
        plan = load_plan(args.graph, args.overrides)
    except GraphConfigError as e:
        print(f"invalid graph:\n{scrub(str(e))}", file=sys.stderr)
        return EXIT_INVALID
    if args.command == "worker":
        from engine.serve import serve_worker

        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.processes < 0:
            print("--processes must be >= 0 (0: one per core)", file=sys.stderr)
            return EXIT_INVALID
        if args.processes != 1:
            from engine.shards import cpu_count
            from engine.worker_processes import serve_workers

            return serve_workers(args, args.processes or cpu_count())
        return serve_worker(plan, args)
    if args.command == "validate":
        if args.connect:
            from engine.preflight import preflight

            print(f"{args.graph}: opening its sources and setting up its nodes ...")
            checks = run_async(preflight(plan, args.timeout_s))
            for c in checks:
                print(c.line(), flush=True)
            failed = [c for c in checks if not c.ok]
            if failed:
                lines = "\n".join(c.line() for c in failed)
                print(
                    f"invalid graph:\n{args.graph}: {len(failed)} of {len(checks)} checks failed:\n{lines}",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        print(
            f"{args.graph}: ok ({len(plan.sources)} sources, {len(plan.nodes)} nodes, "
            f"device {plan.device}: {plan.device_reason})"
        )
        return 0
    if args.summary_json is not None and args.summary_json.is_dir():  # say it now, not after the run
        print(
            f"framegraph run: --summary-json {args.summary_json} is a directory: give a file path",
            file=sys.stderr,
        )
        return EXIT_INVALID
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    aliased = [f"{n.spec.id}={n.op}" for n in plan.nodes if n.op != n.spec.op]
    print(
        f"device {plan.device} ({plan.device_reason})" + (f"; {', '.join(aliased)}" if aliased else ""),
        file=sys.stderr,
    )
    failures: list[str] = []
    try:
        if args.processes != 1:
            summary, failures = _run_processes(plan, args)
        else:
            summary = _run(plan, args)
    except FramegraphError as e:
        print(f"run failed: {scrub(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(summary)
    for failure in failures:
        print(f"run failed: {scrub(failure)}", file=sys.stderr)
    if args.summary_json:
        try:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(json.dumps(summary, indent=2))
        except OSError as e:
            print(f"run: cannot write --summary-json {args.summary_json}: {e.strerror or e}", file=sys.stderr)
            return EXIT_FAILED
    return run_exit_code(summary, failures)


def run_exit_code(summary: dict[str, Any], process_failures: list[str]) -> int:
    """`framegraph run`'s exit status: 1 if a process failed, 4 if a stream failed (its source
    never opened, became unreadable or gave up reconnecting) or a node dropped every item it got
    by errors or for want of its output (a refused RTSP push), else 0. A stream whose source
    simply ended, or was stopped, is not a failure."""
    if process_failures:
        return EXIT_FAILED
    if failed_streams(summary) or failing_nodes(summary):
        return EXIT_STREAMS_FAILED
    return 0


def _run_processes(plan: GraphPlan, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    from engine.shards import cpu_count, run_sharded, shard_jobs

    if args.processes < 0:
        raise FramegraphError(f"--processes must be >= 0, got {args.processes}")
    jobs = shard_jobs(
        args.graph,
        args.overrides,
        plan,
        args.processes or cpu_count(),
        max_frames=args.max_frames,
        output_dir=args.output,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        log_level=args.log_level,
        progress_interval_s=args.progress_interval_s,
        plugins=args.plugin,
    )
    asked = args.processes or cpu_count()
    why = ""
    if len(jobs) < asked:
        n = len(plan.sources)
        why = f" (not {asked}: the graph has {n} source{'s' * (n != 1)} and each process needs one)"
    print(
        f"{len(jobs)} process{'es' * (len(jobs) != 1)}, sources per process: "
        + ", ".join(str(len(j.source_indices)) for j in jobs)
        + why,
        file=sys.stderr,
    )
    return run_sharded(plan, jobs)


def _run(plan: GraphPlan, args: argparse.Namespace) -> dict[str, Any]:
    options = RunOptions(max_frames=args.max_frames, output_dir=args.output)
    coro = run_plan(
        plan,
        options,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        progress_interval_s=args.progress_interval_s,
    )
    result: dict[str, Any] = run_async(coro)
    return result


async def run_plan(
    plan: GraphPlan,
    options: RunOptions,
    *,
    metrics_port: int | None = None,
    metrics_address: str = "127.0.0.1",
    progress_interval_s: float = 0.0,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> dict[str, Any]:
    """Run a plan to its end as `framegraph run` does: /metrics, progress lines, stop on signals."""
    runtime = Runtime(plan, options)
    if metrics_port is not None:
        from engine.prometheus import serve

        serve(runtime.metrics, plan.spec.name, metrics_port, metrics_address)  # FramegraphError if taken
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, runtime.stop)
    progress = None
    if progress_interval_s > 0:
        progress = asyncio.create_task(report_progress(runtime.metrics, progress_interval_s))
    try:
        return await runtime.run()
    finally:
        if progress:
            progress.cancel()


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _print_summary(summary: dict[str, Any]) -> None:
    print(summary_text(summary))


if __name__ == "__main__":
    sys.exit(main())
