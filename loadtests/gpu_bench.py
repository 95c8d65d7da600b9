"""GPU throughput: the NVDEC decode ceiling, then the full detection graph, for N streams.

    python loadtests/gpu_bench.py --out OUT [--streams 8,32,64,96] [--seconds 15] [--warmup 3]
                                  [--ceiling-seconds 8] [--budget-s 320]
    python loadtests/gpu_bench.py --export-photo astronaut.png   (where scikit-image is)

On the GPU machine it makes one 1080p30 H.264 6 Mb/s clip (10 s) and measures
(a) the ceiling: N threads, each demuxing the clip with PyAV, rewriting it to Annex B and
    decoding it on its own PyNvVideoCodec decoder as fast as it goes, for --ceiling-seconds;
(b) the graph: N looped, real-time file sources -> decode.nvdec (a thread per stream, <= 16 lanes) ->
    preprocess.torch (batch 32, 5 ms) -> infer.torch (CenterFace fp16, batch 32, workers 2,
    CUDA graphs; waiting for a batch of ~8: up to 33 ms when a process has few streams)
    -> postprocess.centerface -> track.bytetrack (hold_last_frame off: a live camera's frames
    are not held back one frame, 33 ms, for end-of-stream events) -> sink.jsonl (events), for --seconds, the
    first --warmup seconds after the first frame left out of every figure.
--cpu-smoke runs the same plumbing (processes, windows, report) on a machine without a GPU:
a small clip through decode.pyav -> preprocess.cpu -> sink.jsonl; its figures mean nothing.
--rehearse runs the GPU graph on a machine without a GPU, its three GPU operators standing in
for the device with an H100's measured service times (loadtests/gpu_rehearsal.py): its figures
are the host side's (GIL, event loop, threads), not the GPU's.
The graph runs in --processes processes (auto: ~16 streams each, at most half the cores), the
streams dealt out as `framegraph run --processes` does: per-frame Python work holds the GIL,
so one process cannot feed the GPU at 64 x 30 fps. Every edge has a live-video policy, so
overload shows as drops, not as growing latency:
packets drop_oldest (1 s per stream; the queue then drops up to the next keyframe), frames
drop_oldest or a 500 ms latency budget.
Results go to OUT/gpu_bench.json after every step (a run cut short keeps what it measured).
Without scikit-image the clip is made from the PNG in $FG_PHOTO (see --export-photo).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import device, samples  # noqa: E402
from engine.plan import build_plan  # noqa: E402
from engine.runtime import RunOptions, Runtime  # noqa: E402
from engine.yamlsource import load_text  # noqa: E402
from loadtests.bench_window import (  # noqa: E402
    FPS,
    Starvation,
    cores_by_thread,
    snapshot,
    summarize_window,
    thread_cpu_s,
    window,
)
from loadtests.gpu_ceiling import decode_ceiling, model_ceiling, probe_low_latency, smi, smi_used_mib  # noqa: E402
from loadtests.stack_sampler import StackSampler  # noqa: E402

log = logging.getLogger("gpu_bench")
GRAPHS_ENV = "FG_BENCH_CUDA_GRAPHS"  # infer.torch's cuda_graphs in the bench graph: true | false
INFER_ENV = "FG_BENCH_INFER"  # the detect node: torch (infer.torch in process) | triton
TRITON_URL_ENV = "FG_TRITON_GRPC_URL"  # infer.triton's server in --infer triton
TRITON_MODEL = "centerface_torch"  # the TorchScript CenterFace on the GPU (configs/gpu.pbtxt)
# the stack sampler walks every thread's stack holding the GIL: every 5 ms it took 0.16 of a core
# from a 32-stream rehearsal (0.99 -> 0.83 cores used at 50 ms); every 20 ms costs ~0.04
SAMPLE_S = 0.02
GRAPH_OVERHEAD_S = 20.0  # setup, first frame and drain, on top of --seconds, per graph run


def export_photo(path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), samples.photo()[:, :, ::-1])
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    for module in ("torch", "PyNvVideoCodec", "nvidia.dali", "av", "onnx2torch", "numpy"):
        try:
            out[module] = getattr(__import__(module, fromlist=["_"]), "__version__", "?")
        except Exception as e:
            out[module] = f"unavailable: {type(e).__name__}: {e}"
    if device.cuda_available():
        import torch

        out["cuda"] = torch.version.cuda
        try:
            out["gpu"] = torch.cuda.get_device_name(0)
        except Exception as e:
            out["gpu"] = f"unknown: {e}"
    out["nvidia_smi"] = smi(["-L"])
    return out


# --- (b) the full graph ----------------------------------------------------------------------


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
        return f"""\
  - id: detect
    op: infer.triton
    inputs: [pre]
    batch: {{max_batch: 32, max_delay_ms: {delay_ms}}}
    workers: 4
    queue: {{size: 256, policy: latency, budget_ms: 500}}
    config: {{url: "{url}", model: {TRITON_MODEL}, shared_memory: cuda, timeout_s: 10}}
"""
    graphs = os.environ.get(GRAPHS_ENV, "true")
    return f"""\
  - id: detect
    op: infer.torch
    inputs: [pre]
    batch: {{max_batch: 32, max_delay_ms: {delay_ms}}}
    workers: 2
    queue: {{size: 256, policy: latency, budget_ms: 500}}
    config: {{device: cuda, fp16: true, max_batch: 32, cuda_graphs: {graphs}}}
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
        with Starvation() as starved, StackSampler(SAMPLE_S) as sampler:
            await asyncio.sleep(max(1.0, seconds - warmup))
        b, cpu1, threads1 = snapshot(runtime.metrics), time.process_time(), thread_cpu_s()
        result.update(window(runtime.metrics, a, b))
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
            parts = [f.result() for f in futures]
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


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "out/gpu_bench")
    p.add_argument("--streams", default="8,32,64,96")
    p.add_argument("--seconds", type=float, default=15.0, help="each graph run, warm-up included")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--ceiling-seconds", type=float, default=8.0)
    p.add_argument("--budget-s", type=float, default=320.0, help="skip steps that would not fit")
    p.add_argument("--latency", choices=["auto", "native", "low"], default="auto")
    p.add_argument("--clip-dir", type=Path, default=Path(tempfile.gettempdir()) / "fg-bench")
    p.add_argument("--export-photo", type=Path, default=None)
    p.add_argument("--switch-interval-ms", type=float, default=None, help="sys.setswitchinterval (GIL)")
    p.add_argument("--skip-ceiling", action="store_true")
    p.add_argument(
        "--ceiling-from",
        type=Path,
        default=None,
        help="a gpu_bench.json from this machine: reuse its decode ceilings instead of measuring",
    )
    p.add_argument("--model-seconds", type=float, default=0.0, help="> 0: measure the model alone first")
    p.add_argument("--cpu-smoke", action="store_true", help="check the plumbing without a GPU (no figures)")
    p.add_argument(
        "--rehearse",
        action="store_true",
        help="the GPU graph with the GPU simulated (loadtests/gpu_rehearsal.py): the host side's figures "
        "on a machine without a GPU",
    )
    p.add_argument(
        "--cuda-graphs",
        choices=["true", "false"],
        default="true",
        help="infer.torch's cuda_graphs (the forward pass replayed from captured CUDA graphs)",
    )
    p.add_argument(
        "--infer",
        choices=["torch", "triton"],
        default=os.environ.get(INFER_ENV, "torch"),
        help=f"the detect node: infer.torch in the graph's process, or infer.triton with {TRITON_MODEL} "
        f"through CUDA shared memory (server at ${TRITON_URL_ENV}, else one started by scripts/triton)",
    )
    p.add_argument(
        "--processes",
        default="auto",
        help="graph processes per run: a number, or auto (~16 streams each, at most half the cores); "
        "a comma list runs each setting in turn (e.g. 1,auto)",
    )
    args = p.parse_args()
    if args.cpu_smoke and args.rehearse:
        p.error("--cpu-smoke and --rehearse are two different runs: choose one")
    args.mode = "cpu-smoke" if args.cpu_smoke else "rehearse" if args.rehearse else "gpu"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.export_photo:
        export_photo(args.export_photo)
        return 0
    deadline = time.monotonic() + args.budget_s
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "gpu_bench.json"
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "versions": versions()}

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2))

    save()
    why = None if args.mode != "gpu" else device.nvdec_reason()
    if why is not None:
        report["error"] = f"no GPU path here: {why}"
        save()
        print(report["error"], file=sys.stderr)
        return 1
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    clip = args.clip_dir / "bench_1080p30_6mbps_10s.mp4"
    t0 = time.monotonic()
    if args.cpu_smoke:
        clip = args.clip_dir / "smoke_360p30_2s.mp4"
        args.skip_ceiling, args.latency, args.model_seconds = True, "native", 0.0
    if args.rehearse:  # the simulated NVDEC's rate is the ceiling; nothing to probe
        args.latency, args.model_seconds, args.infer = "native", 0.0, "torch"
    if not clip.exists():
        if args.cpu_smoke:
            samples.make_clip(clip, 640, 360, fps=FPS, seconds=2)
        else:
            samples.make_clip(clip, 1920, 1080, fps=FPS, seconds=10, bitrate=6_000_000)
    report["clip"] = {
        "path": str(clip),
        "spec": "640x360 30 fps H.264 2 s (cpu smoke)"
        if args.cpu_smoke
        else "1920x1080 30 fps H.264 6 Mb/s 10 s",
        "make_s": round(time.monotonic() - t0, 1),
    }
    latency = args.latency
    if latency == "auto":
        low = probe_low_latency(clip)
        latency = "low" if low is None else "native"
        report["latency_probe"] = low or "low latency decoding works"
    report["latency_mode"] = latency
    os.environ[GRAPHS_ENV] = args.cuda_graphs  # spawned graph processes read it too
    os.environ[INFER_ENV] = args.infer
    report["cuda_graphs"] = args.cuda_graphs == "true"
    report["infer"] = {"gpu": args.infer, "cpu-smoke": "none (cpu smoke)", "rehearse": "torch (simulated)"}[
        args.mode
    ]
    if args.rehearse:
        from loadtests import gpu_rehearsal

        t1 = time.monotonic()
        recording = gpu_rehearsal.record_outputs(clip, args.clip_dir / "bench_centerface_outputs.npz")
        os.environ[gpu_rehearsal.OUTPUTS_ENV] = str(recording)  # spawned graph processes read it too
        report["rehearsal"] = {
            "simulated_times_us": gpu_rehearsal.SimTimes.from_env().as_dict(),
            "recorded_outputs": str(recording),
            "record_s": round(time.monotonic() - t1, 1),
            "what": "the GPU graph, its GPU work simulated (loadtests/gpu_rehearsal.py): host-side figures",
        }
    save()
    triton = None
    if args.infer == "triton" and args.mode == "gpu" and not os.environ.get(TRITON_URL_ENV):
        triton = BenchTriton()
        os.environ[TRITON_URL_ENV] = triton.start()
        report["triton"] = {"started_s": triton.started_s, "url": os.environ[TRITON_URL_ENV]}
        save()
    try:
        return measure(args, report, save, clip, latency, counts, deadline, report_path)
    finally:
        if triton is not None:
            triton.stop()


class BenchTriton:
    """A Triton for --infer triton, run by scripts/triton (GPU configs on a GPU machine)."""

    def __init__(self) -> None:
        from engine.childproc import free_port

        self.env = {
            **os.environ,
            "FG_TRITON_NAME": "gpu-bench",
            "FG_TRITON_GRPC_PORT": str(free_port()),
            "FG_TRITON_HTTP_PORT": str(free_port()),
        }
        self.started_s = 0.0

    def _call(self, action: str) -> None:
        import subprocess

        script = str(ROOT / "scripts/triton")
        subprocess.run([script, action], env=self.env, cwd=ROOT, check=True, timeout=300)

    def start(self) -> str:
        t0 = time.monotonic()
        self._call("start")
        self.started_s = round(time.monotonic() - t0, 1)
        return f"127.0.0.1:{self.env['FG_TRITON_GRPC_PORT']}"

    def stop(self) -> None:
        self._call("stop")


def earlier_ceiling(path: Path | None) -> dict[str, dict[str, Any]]:
    """The decode ceilings an earlier gpu_bench.json measured, by stream count ({} if none)."""
    if path is None or not path.is_file():
        return {}
    found = json.loads(path.read_text()).get("ceiling", {})
    return {k: v for k, v in found.items() if isinstance(v, dict) and v.get("fps")}


def measure(
    args: argparse.Namespace,
    report: dict[str, Any],
    save: Any,
    clip: Path,
    latency: str,
    counts: list[int],
    deadline: float,
    report_path: Path,
) -> int:
    """The model alone (if asked), the decode ceiling, then the graph runs; into `report`."""
    if args.model_seconds > 0:
        report["model_ceiling"] = model_ceiling(args.model_seconds)
        print(f"model alone: {report['model_ceiling']}", flush=True)
        save()
    ceiling: dict[int, dict[str, Any]] = {}
    earlier = earlier_ceiling(args.ceiling_from)
    for n in counts:
        if args.rehearse:  # the simulated NVDEC's rate, whatever the stream count
            from loadtests.gpu_rehearsal import SimTimes

            ceiling[n] = {"fps": round(1e6 / SimTimes.from_env().decode_us, 1), "simulated": True}
            continue
        if str(n) in earlier:  # measured by an earlier run on this machine (same clip)
            ceiling[n] = {**earlier[str(n)], "from": str(args.ceiling_from)}
            continue
        if args.skip_ceiling or time.monotonic() + args.ceiling_seconds + 10 > deadline:
            ceiling[n] = {"skipped": "time budget" if not args.skip_ceiling else "--skip-ceiling"}
            continue
        ceiling[n] = decode_ceiling(clip, n, args.ceiling_seconds)
        print(
            f"ceiling {n:3d} streams: {ceiling[n].get('fps')} fps {ceiling[n].get('errors', '')}", flush=True
        )
        report["ceiling"] = {str(k): v for k, v in ceiling.items()}
        save()
    report["ceiling"] = {str(k): v for k, v in ceiling.items()}  # reused, simulated or skipped too
    save()

    runs: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="fg-bench-out-"))
    try:
        settings = [x.strip() for x in args.processes.split(",") if x.strip()]
        for n, setting in [(n, x) for n in counts for x in settings]:
            k = processes_for(setting, n)
            key = str(n) if len(settings) == 1 else f"{n}x{k}p"
            if time.monotonic() + args.seconds + GRAPH_OVERHEAD_S > deadline:
                runs[key] = {"skipped": "time budget"}
                continue
            try:
                common = (args.seconds, args.warmup, latency, scratch, args.mode)
                if k == 1:
                    r = run_graph_sync(clip, list(range(n)), *common)
                else:
                    r = run_graph_processes(clip, n, k, *common)
            except Exception as e:
                log.exception("graph run with %d streams failed", n)
                r = {"error": f"{type(e).__name__}: {e}"}
            r.pop("_raw", None)
            r["streams"] = n
            r["processes"] = k
            r["offered_fps"] = n * FPS
            c = ceiling.get(n, {}).get("fps")
            if c and "total_fps" in r:
                r["decode_ceiling_fps"] = c
                r["ratio_full_to_ceiling"] = round(r["total_fps"] / c, 3)
                r["ratio_full_to_min_offered_ceiling"] = round(r["total_fps"] / min(c, n * FPS), 3)
            runs[key] = r
            report["graph"] = runs
            save()
            print(
                f"graph {n:3d} streams in {k} processes: {r.get('total_fps')} fps, "
                f"realtime {r.get('streams_realtime')}/{n}, "
                f"latency {r.get('latency_ms')}, drops {r.get('drops_by_reason')} {r.get('error', '')}",
                flush=True,
            )
            hot = r.get("hot_stacks") or next(
                (p["hot_stacks"] for p in r.get("per_process", []) if "hot_stacks" in p), None
            )
            if hot:  # the first process's threads: where the GIL went
                took = f"{hot['samples']}/{hot['expected_samples']} samples"
                print(f"  busy threads {hot['busy_threads']} ({took})")
                for t in hot["top"][:4]:
                    print(f"    {t['busy_threads']:6.2f} {t['thread']}: {t['stack'][:160]}")
            gc.collect()
            if args.mode == "gpu":
                import torch

                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["elapsed_s"] = round(time.monotonic() - (deadline - args.budget_s), 1)
    save()
    print(f"wrote {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
