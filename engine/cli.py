"""The `framegraph` command: validate, run and describe graphs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from engine.errors import FramegraphError, GraphConfigError
from engine.plan import GraphPlan, load_plan
from engine.progress import report_progress
from engine.runtime import RunOptions, Runtime
from engine.spec import GraphSpec

EXIT_INVALID = 2
EXIT_FAILED = 1


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
    r.add_argument("--max-frames", type=int, default=None, help="stop each stream after N frames")
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
    r.add_argument("--log-level", default="WARNING")
    r.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")
    r.add_argument("--metrics-address", default="127.0.0.1", help="address for --metrics-port")
    sub.add_parser("schema", help="print the JSON Schema of graph files (for editors)")
    w = sub.add_parser("worker", help="run a graph as a worker: streams come from a registry, API on a port")
    w.add_argument("graph", type=Path)
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    w.add_argument("--redis", default=os.environ.get("FG_REDIS_URL"), help="registry; none: in memory")
    w.add_argument("--namespace", default="default", help="registry namespace (one per graph)")
    w.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}")
    w.add_argument("--lease-ttl-s", type=float, default=5.0)
    w.add_argument("--api-address", default="127.0.0.1")
    w.add_argument("--api-port", type=int, default=8080)
    w.add_argument("--token-file", default=os.environ.get("FG_API_TOKEN_FILE"), help="bearer token file")
    w.add_argument("--protect-reads", action="store_true", help="reads need the token too")
    w.add_argument("--output", type=Path, default=Path("out"))
    w.add_argument("--plugin", action="append", default=[], help="module to import (registers operators)")
    w.add_argument("--log-level", default="INFO")
    w.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="K",
        help="K worker processes sharing the streams through --redis (ids WORKER-ID-i, API on "
        "API-PORT+i; 0: one per core): per-frame Python work then uses K cores",
    )
    s = sub.add_parser("streams", help="list, add or remove streams through a worker's control API")
    s.add_argument("action", choices=["ls", "add", "rm"])
    s.add_argument("stream_id", nargs="?")
    s.add_argument("--api", default=os.environ.get("FG_API_URL", "http://127.0.0.1:8080"))
    s.add_argument("--token", default=os.environ.get("FG_API_TOKEN"))
    s.add_argument("--url", help="with add: the stream's URL")
    s.add_argument("--op", help="with add: the source operator")
    s.add_argument("--config", default="{}", help="with add: the source config as JSON")
    from engine.eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(GraphSpec.model_json_schema(by_alias=True), indent=2))
        return 0
    if args.command == "streams":
        from engine.streams_client import streams_command

        return streams_command(args)
    if args.command == "eval":
        from engine.eval_cli import command as eval_command

        return eval_command(args)
    for module in getattr(args, "plugin", []):
        importlib.import_module(module)
    try:
        plan = load_plan(args.graph, args.overrides)
    except GraphConfigError as e:
        print(f"invalid graph:\n{e}", file=sys.stderr)
        return EXIT_INVALID
    if args.command == "worker":
        from engine.serve import serve_worker

        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        print(f"run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(summary)
    for failure in failures:
        print(f"run failed: {failure}", file=sys.stderr)
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary, indent=2))
    return EXIT_FAILED if failures else 0


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
    )
    print(
        f"{len(jobs)} processes, sources per process: " + ", ".join(str(len(j.source_indices)) for j in jobs),
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

        serve(runtime.metrics, plan.spec.name, metrics_port, metrics_address)
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
    print(
        f"graph {summary['graph']}: {summary['frames_out']} frames in {summary['duration_s']} s "
        f"({summary['fps']} fps), latency ms {summary['latency_ms']}"
    )
    for sid, s in summary["streams"].items():
        print(
            f"  stream {sid}: in {s['frames_in']} out {s['frames_out']} dropped {s['dropped']} "
            f"fps {s['fps']} latency ms {s['latency_ms']}"
        )
    for nid, n in summary["nodes"].items():
        drops = f" dropped {n['dropped_by_reason']}" if n["dropped"] else ""
        batch = f" mean batch {n['mean_batch']}" if "mean_batch" in n else ""
        stage = ""
        if "work_ms" in n:
            q, w = n["queue_wait_ms"], n["work_ms"]
            stage = (
                f" | queue ms p50/p95/p99 {q['p50']}/{q['p95']}/{q['p99']}"
                f" work ms {w['p50']}/{w['p95']}/{w['p99']}"
            )
        print(f"  node {nid}: in {n['in']} out {n['out']}{drops}{batch}{stage}")


if __name__ == "__main__":
    sys.exit(main())
