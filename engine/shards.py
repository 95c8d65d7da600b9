"""One graph run in several processes, each with a share of the graph's sources.

Per-frame Python work (demuxing, NVDEC calls, postprocess, tracking, events) holds the GIL, so
one process tops out at a few thousand frame-hops per second however many cores or GPUs the box
has. `framegraph run --processes K` starts K processes (spawned: CUDA-safe), deals the sources
out round-robin, runs the same graph in each, and merges their summaries. Processes share what
is shared by design: the GPU (NVDEC sessions and models per process), a Triton server (which
batches across them), the Kafka topic, the output directory (sink.jsonl appends whole lines).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.errors import FramegraphError
from engine.plan import GraphPlan, load_plan

log = logging.getLogger("framegraph.shards")


@dataclass
class ShardJob:
    """What one process runs: the graph file, overrides, and which sources (by index) it owns."""

    graph: Path
    overrides: list[str]
    source_indices: list[int]
    index: int
    max_frames: int | None = None
    output_dir: Path = field(default_factory=lambda: Path("out"))
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    log_level: str = "WARNING"
    progress_interval_s: float = 0.0
    plugins: list[str] = field(default_factory=list)  # imported first (a spawned process has none)


def deal_sources(n_sources: int, processes: int) -> list[list[int]]:
    """Source indices per process, round-robin; never more processes than sources."""
    k = max(1, min(processes, n_sources))
    return [list(range(i, n_sources, k)) for i in range(k)]


def shard_plan(plan: GraphPlan, indices: list[int]) -> GraphPlan:
    """The plan with only the sources at `indices` (nodes and node edges unchanged)."""
    keep = {plan.sources[i].spec.id for i in indices}
    plan.sources = [s for s in plan.sources if s.spec.id in keep]
    all_ids = {s.id for s in plan.spec.sources}
    plan.edges = [e for e in plan.edges if e.src not in all_ids or e.src in keep]
    return plan


def _child(job: ShardJob, conn: Connection) -> None:
    """Entry point of a shard process: run its share, send the summary (or the error) back."""
    from engine.cli import run_async, run_plan
    from engine.plugins import load_plugins
    from engine.runtime import RunOptions

    logging.basicConfig(
        level=job.log_level.upper(),
        format=f"%(asctime)s %(levelname)s shard{job.index} %(name)s: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM for all

    async def go() -> dict[str, Any]:
        return await run_plan(
            shard_plan(load_plan(job.graph, job.overrides), job.source_indices),
            RunOptions(max_frames=job.max_frames, output_dir=job.output_dir),
            metrics_port=job.metrics_port,
            metrics_address=job.metrics_address,
            progress_interval_s=job.progress_interval_s,
            stop_signals=(signal.SIGTERM,),
        )

    try:
        load_plugins(job.plugins)
        conn.send(("ok", run_async(go())))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_sharded(plan: GraphPlan, jobs: list[ShardJob]) -> tuple[dict[str, Any], list[str]]:
    """Run the jobs in spawned processes; the merged summary and one line per failed process."""
    ctx = mp.get_context("spawn")
    procs: list[tuple[ShardJob, Any, Connection]] = []
    for job in jobs:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(job, child), name=f"framegraph-shard{job.index}")
        proc.start()
        child.close()
        procs.append((job, proc, parent))

    def forward(signum: int, _frame: Any) -> None:
        for _, proc, _ in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    summaries: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for job, proc, conn in procs:
            result: tuple[str, Any] | None = None
            while result is None and (proc.is_alive() or conn.poll()):
                if conn.poll(0.2):
                    try:
                        result = conn.recv()
                    except EOFError:
                        break
            proc.join()
            ids = ", ".join(plan.sources[i].spec.id for i in job.source_indices)
            where = f"process {job.index} (sources {ids})"
            if result is None:
                errors.append(f"{where} exited with code {proc.exitcode} before reporting")
            elif result[0] == "error":
                errors.append(f"{where}: {result[1]}")
            else:
                summaries.append(result[1])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not summaries:
        raise FramegraphError("; ".join(errors) or "no process reported")
    return merge_summaries(plan.spec.name, summaries), errors


def merge_summaries(graph: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the processes': counts and fps add up, streams are disjoint.

    Percentiles cannot be merged from percentiles: the merged ones are the worst process's, and
    each process's own summary is kept under `processes`.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for nid, n in s["nodes"].items():
            nodes[nid] = _merge_node(nodes[nid], n) if nid in nodes else dict(n)
    return {
        "graph": graph,
        "duration_s": max(s["duration_s"] for s in summaries),
        "frames_out": sum(s["frames_out"] for s in summaries),
        "fps": round(sum(s["fps"] for s in summaries), 2),
        "latency_ms": _worst(s["latency_ms"] for s in summaries),
        "streams": {sid: v for s in summaries for sid, v in s["streams"].items()},
        "nodes": nodes,
        "processes": summaries,
    }


def _merge_node(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key in ("in", "out", "dropped", "errors"):
        out[key] = a.get(key, 0) + b.get(key, 0)
    out["busy_s"] = round(a.get("busy_s", 0.0) + b.get("busy_s", 0.0), 3)
    if "last_error" in b:
        out["last_error"] = b["last_error"]
    for key in ("dropped_by_reason", "events"):
        if key in a or key in b:
            out[key] = dict(Counter(a.get(key, {})) + Counter(b.get(key, {})))
    out["dropped_by_stream"] = {**a.get("dropped_by_stream", {}), **b.get("dropped_by_stream", {})}
    if "batches" in a or "batches" in b:
        na, nb = a.get("batches", 0), b.get("batches", 0)
        mean = (a.get("mean_batch", 0.0) * na + b.get("mean_batch", 0.0) * nb) / max(1, na + nb)
        out["batches"], out["mean_batch"] = na + nb, round(mean, 2)
    for key in ("queue_wait_ms", "work_ms"):
        if key in a or key in b:
            out[key] = _worst([a.get(key), b.get(key)])
    return out


def _worst(percentiles: Any) -> dict[str, Any]:
    """Key by key, the largest of several percentile dicts (None: no samples there)."""
    out: dict[str, Any] = {}
    for p in percentiles:
        for k, v in (p or {}).items():
            have = out.get(k)
            out[k] = v if have is None or (v is not None and v > have) else have
    return out


def shard_jobs(
    graph: Path, overrides: list[str], plan: GraphPlan, processes: int, **options: Any
) -> list[ShardJob]:
    """One job per process with its share of the sources; metrics ports are port, port+1, ..."""
    if not plan.sources:
        raise FramegraphError(
            "--processes needs a graph with sources (a worker gets streams from its registry)"
        )
    port = options.pop("metrics_port", None)
    return [
        ShardJob(
            graph,
            overrides,
            indices,
            i,
            metrics_port=None if port is None else port + i,
            **options,
        )
        for i, indices in enumerate(deal_sources(len(plan.sources), processes))
    ]


def cpu_count() -> int:
    """Cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
