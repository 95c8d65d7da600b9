"""The benchmark graph of loadtests/gpu_bench.py and how it is run: its YAML (GPU, --cpu-smoke,
or --rehearse with loadtests/gpu_rehearsal.py's stand-ins), one run in this process or in several
spawned processes, and the figures of its measuring window (fps, latency, drops, CPU per thread
group, GIL and event-loop starvation, hot stacks, the events the sink wrote)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from engine.plan import build_plan
from engine.runtime import RunOptions, Runtime
from engine.yamlsource import load_text
from loadtests.bench_window import (
    FPS,
    Stages,
    Starvation,
    cores_by_thread,
    merge_stage_raw,
    snapshot,
    stage_figures,
    summarize_window,
    thread_cpu_s,
    window,
)
from loadtests.gpu_ceiling import smi_used_mib
from loadtests.stack_sampler import StackSampler

GRAPHS_ENV = "FG_BENCH_CUDA_GRAPHS"  # infer.torch's cuda_graphs in the bench graph: true | false
INFER_ENV = "FG_BENCH_INFER"  # the detect node: torch (infer.torch in process) | triton
TRITON_URL_ENV = "FG_TRITON_GRPC_URL"  # infer.triton's server in --infer triton
TRITON_MODEL = "centerface_torch"  # the TorchScript CenterFace on the GPU (configs/gpu.pbtxt)
# the stack sampler walks every thread's stack holding the GIL: every 5 ms it took 0.16 of a core
# from a 32-stream rehearsal (0.99 -> 0.83 cores used at 50 ms); every 20 ms costs ~0.04
SAMPLE_S = 0.02


def detect_delay_ms(streams: int, target_batch: int = 8) -> int:
    """infer.torch's max_delay_ms for a process with `streams` cameras: long enough for a batch of
    ~target_batch (a process of 8 streams sees a frame every 4 ms; 5 ms would give batches of 1-2,
    and 8 processes of batch-1 forward passes would time-slice the GPU), at most 33 ms (a frame)."""
    return min(33, max(5, round(target_batch * 1000 / (streams * FPS))))


def detect_node(streams: int) -> str:
    """The detection node: infer.torch in this process, or infer.triton (CenterFace as TorchScript
    on the server's GPU, the batches handed over in CUDA shared memory, 4 batches in flight)."""
    delay_ms = detect_delay_ms(streams)
    if os.environ.get(INFER_ENV, "torch") == "triton":
        url = os.environ.get(TRITON_URL_ENV, "")
        op, workers = "infer.triton", 4
        config = f'url: "{url}", model: {TRITON_MODEL}, shared_memory: cuda, timeout_s: 10'
    else:
        op, workers = "infer.torch", 2
        config = f"device: cuda, fp16: true, max_batch: 32, cuda_graphs: {os.environ.get(GRAPHS_ENV, 'true')}"
    return f"""\
  - id: detect
    op: {op}
    inputs: [pre]
    batch: {{max_batch: 32, max_delay_ms: {delay_ms}}}
    workers: {workers}
    queue: {{size: 256, policy: latency, budget_ms: 500}}
    config: {{{config}}}
"""


def graph_yaml(clip: Path, ids: list[int], latency: str, cpu: bool = False) -> str:
    """The benchmark graph for these stream ids: the GPU one, or (cpu) the --cpu-smoke one."""
    sources = "\n".join(
        f'  - {{id: cam{i:03d}, url: "{clip}", config: {{loop: true, realtime: true}}}}' for i in ids
    )
    if cpu:  # --cpu-smoke: the bench's plumbing without a GPU
        return f"""\
name: gpu_bench_{len(ids)}
sources:
{sources}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources], config: {{thread_type: slice}}}}
  - {{id: pre, op: preprocess.cpu, inputs: [decode], queue: {{size: 64, policy: drop_oldest}}}}
  - {{id: events, op: sink.jsonl, inputs: [pre], config: {{path: "{{graph}}.jsonl", mode: frames}}}}
"""
    return f"""\
name: gpu_bench_{len(ids)}
sources:
{sources}
nodes:
  - id: decode
    op: decode.nvdec
    inputs: [sources]
    workers: {min(16, len(ids))}
    queue: {{size: 30, policy: drop_oldest}}
    config: {{latency: {latency}}}
  - id: pre
    op: preprocess.torch
    inputs: [decode]
    batch: {{max_batch: 32, max_delay_ms: 5}}
    queue: {{size: 256, policy: latency, budget_ms: 500}}
    config: {{width: 640, height: 384}}
{detect_node(len(ids))}  - id: post
    op: postprocess.centerface
    inputs: [detect]
    queue: {{size: 256, policy: drop_oldest}}
  - id: track
    op: track.bytetrack
    inputs: [post]
    queue: {{size: 256, policy: drop_oldest}}
    config: {{hold_last_frame: false}}
  - id: events
    op: sink.jsonl
    inputs: [track]
    queue: {{size: 256, policy: drop_oldest}}
    config: {{path: "{{graph}}.jsonl", mode: events}}
"""


async def run_graph_for(
    clip: Path, ids: list[int], seconds: float, warmup: float, latency: str, out_dir: Path, mode: str = "gpu"
) -> dict[str, Any]:
    """One graph run of `mode` (gpu | cpu-smoke | rehearse) in this process; its window's figures."""
    gpu = mode == "gpu"
    text = graph_yaml(clip, ids, latency, cpu=mode == "cpu-smoke")
    if mode == "rehearse":  # importing it registers the stand-ins (in spawned processes too)
        from loadtests import gpu_rehearsal

        text = gpu_rehearsal.rehearsal_yaml(text)
        gpu_rehearsal.reset_gpu()
    plan = build_plan(load_text(text, f"gpu_bench_{len(ids)}"))
    runtime = Runtime(plan, RunOptions(output_dir=out_dir, device="cuda" if gpu else "cpu", threads=64))
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    task = asyncio.create_task(runtime.run())
    result: dict[str, Any] = {}
    try:
        while not any(s.frames_out for s in runtime.metrics.streams.values()):
            if task.done():
                await task  # raises what stopped the graph (setup errors: missing model, no GPU)
                raise RuntimeError("the graph ended before any frame reached the sink")
            if time.monotonic() - started > 90:
                raise TimeoutError("no frame reached the sink within 90 s")
            await asyncio.sleep(0.05)
        result["first_frame_s"] = round(time.monotonic() - started, 2)
        await asyncio.sleep(warmup)
        a, cpu0, threads0 = snapshot(runtime.metrics), time.process_time(), thread_cpu_s()
        with Starvation() as starved, StackSampler(SAMPLE_S) as sampler, Stages(runtime.metrics) as stages:
            await asyncio.sleep(max(1.0, seconds - warmup))
        b, cpu1, threads1 = snapshot(runtime.metrics), time.process_time(), thread_cpu_s()
        result.update(window(runtime.metrics, a, b))
        result["_raw"]["stages"] = stages.raw()
        # per node, within the window (the summary's "nodes" cover the whole run, start-up included)
        result["stages_ms"] = stage_figures(result["_raw"]["stages"])
        result["cpu_cores_used"] = round((cpu1 - cpu0) / (b["t"] - a["t"]), 2)  # ~1: GIL-bound
        result["cpu_cores_by_thread"] = cores_by_thread(threads0, threads1, b["t"] - a["t"])
        result["starvation_ms"] = starved.figures()
        result["hot_stacks"] = sampler.figures(top=12)  # where the threads were: the GIL's budget
        result["detect_max_delay_ms"] = None if mode == "cpu-smoke" else detect_delay_ms(len(ids))
        if mode == "rehearse":
            result["simulated_device_busy_s"] = gpu_rehearsal.device_busy()
        if gpu:
            import torch

            result["gpu_memory_mib"] = {
                "nvidia_smi_used": await asyncio.to_thread(smi_used_mib),
                "torch_max_allocated": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            }
    finally:
        runtime.stop()
        try:
            summary = await asyncio.wait_for(task, 60)
            result["nodes"] = {
                nid: {k: v for k, v in n.items() if k != "dropped_by_stream"}
                for nid, n in summary["nodes"].items()
                if not nid.startswith("cam")
            }
        except Exception as e:  # a run that did not drain still reports its window
            task.cancel()
            result["stop_error"] = f"{type(e).__name__}: {e}"
        if mode != "cpu-smoke":
            result["events"] = event_counts(out_dir / f"gpu_bench_{len(ids)}.jsonl")
    return result


def event_counts(path: Path, max_lines: int = 50_000) -> dict[str, Any]:
    """What the events sink wrote (its first `max_lines` lines): events by type, faces found, and
    faces with a confirmed track id; proof that detection and tracking really ran."""
    by_type: Counter[str] = Counter()
    faces = tracked = lines = 0
    if path.is_file():
        with path.open() as f:
            for line in f:
                if lines >= max_lines:
                    break
                lines += 1
                event = json.loads(line)
                by_type[event.get("type", "?")] += 1
                for d in event.get("detections") or ():
                    faces += 1
                    tracked += d.get("track_id", -1) >= 0
    return {"lines_read": lines, "by_type": dict(by_type), "faces": faces, "tracked_faces": tracked}


def run_graph_sync(*args: Any) -> dict[str, Any]:
    coro = run_graph_for(*args)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_graph_processes(
    clip: Path,
    streams: int,
    processes: int,
    seconds: float,
    warmup: float,
    latency: str,
    out_dir: Path,
    mode: str = "gpu",
) -> dict[str, Any]:
    """The graph in `processes` spawned processes (streams dealt round-robin, as `framegraph run
    --processes` does), their measuring windows merged: fps and drops add up, latency
    percentiles over every process's samples. The windows start within a second of each other."""
    from concurrent.futures import ProcessPoolExecutor

    from engine.shards import deal_sources

    shares = deal_sources(streams, processes)
    ctx = multiprocessing.get_context("spawn")
    share_env = ""
    if mode == "rehearse":  # each process simulates its share of one GPU
        from loadtests.gpu_rehearsal import SHARE_ENV as share_env

        os.environ[share_env] = str(len(shares))
    try:
        with ProcessPoolExecutor(len(shares), mp_context=ctx) as pool:
            futures = [
                pool.submit(run_graph_sync, clip, ids, seconds, warmup, latency, out_dir / f"p{i}", mode)
                for i, ids in enumerate(shares)
            ]
            parts: list[dict[str, Any]] = []
            for i, f in enumerate(futures):  # one process failing keeps the others' figures
                try:
                    parts.append(f.result())
                except Exception as e:  # setup error, no first frame, a crashed process
                    parts.append({"error": f"process {i}: {type(e).__name__}: {e}"})
    finally:
        if share_env:
            os.environ.pop(share_env, None)
    errors = [p["error"] for p in parts if "error" in p]
    ok = [p for p in parts if "_raw" in p]
    if not ok:
        return {"error": "; ".join(errors) or "no process measured", "processes": len(shares)}
    fps = {sid: f for p in ok for sid, f in p["_raw"]["fps"].items()}
    drops: Counter[str] = Counter()
    for p in ok:
        drops.update(p["drops_by_reason"])
    merged = summarize_window(
        max(p["window_s"] for p in ok),
        fps,
        [v for p in ok for v in p["_raw"]["latency"]],
        drops,
        [sid for p in ok for sid in p["_raw"]["held"]],
    )
    merged["processes"] = len(shares)
    merged["stages_ms"] = stage_figures(merge_stage_raw([p["_raw"]["stages"] for p in ok]))
    merged["starvation_ms_worst_process"] = {
        probe: max(
            (p["starvation_ms"][probe] for p in ok if "starvation_ms" in p),
            key=lambda f: f.get("p99") or 0.0,
            default={},
        )
        for probe in ("gil_wait", "loop_lag")
    }
    merged["first_frame_s"] = max(p.get("first_frame_s", 0.0) for p in ok)
    merged["cpu_cores_used"] = round(sum(p.get("cpu_cores_used", 0.0) for p in ok), 2)
    if mode != "cpu-smoke":
        by_type: Counter[str] = Counter()
        for p in ok:
            by_type.update(p["events"]["by_type"])
        merged["events"] = {
            "by_type": dict(by_type),
            **{k: sum(p["events"][k] for p in ok) for k in ("lines_read", "faces", "tracked_faces")},
        }
    if mode == "gpu":
        merged["gpu_memory_mib"] = {
            "nvidia_smi_used": max((p["gpu_memory_mib"]["nvidia_smi_used"] or 0) for p in ok),
            "torch_max_allocated_sum": round(sum(p["gpu_memory_mib"]["torch_max_allocated"] for p in ok), 1),
        }
    merged["per_process"] = [{k: v for k, v in p.items() if k not in ("_raw", "nodes")} for p in parts]
    if errors:
        merged["errors"] = errors
    return merged


# streams per graph process under --processes auto. The rehearsal (--rehearse, H100 service
# times, one process alone on a core with its share of the GPU) held every stream, at p95
# 234-235 ms with 8 per process, 134-136 ms with 16, 110-135 ms with 32 (0.8-0.9 of a core: no
# headroom left); fewer
# processes mean bigger batches, so the GPU spends less of its time on fixed per-batch costs.
STREAMS_PER_PROCESS = 16


def processes_for(spec: str, streams: int) -> int:
    """--processes: a number, or auto (about STREAMS_PER_PROCESS each, at most half the cores)."""
    if spec != "auto":
        return max(1, int(spec))
    from engine.shards import cpu_count

    return max(1, min(cpu_count() // 2, -(-streams // STREAMS_PER_PROCESS)))
