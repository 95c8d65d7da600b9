"""GPU throughput: the NVDEC decode ceiling, then the full detection graph, for N streams.

    python loadtests/gpu_bench.py --out OUT [--streams 8,32,64,96] [--seconds 15] [--warmup 3]
                                  [--ceiling-seconds 8] [--budget-s 320]
    python loadtests/gpu_bench.py --export-photo astronaut.png   (where scikit-image is)

On the GPU machine it makes one 1080p30 H.264 6 Mb/s clip (--seconds + 5 s, at least 10 s: no
source loops inside a run) and measures
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
for the device with an H100's (or, --rehearse-gpu h200, an H200's) measured service times
(loadtests/gpu_rehearsal.py): its figures are the host side's (GIL, event loop, threads), not the GPU's.
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
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import device, samples  # noqa: E402
from loadtests.bench_graph import (  # noqa: E402
    GRAPHS_ENV,
    INFER_ENV,
    TRITON_MODEL,
    TRITON_URL_ENV,
    processes_for,
    run_graph_processes,
    run_graph_sync,
)
from loadtests.bench_window import FPS  # noqa: E402
from loadtests.gpu_ceiling import decode_ceiling, model_ceiling, probe_low_latency, smi  # noqa: E402

log = logging.getLogger("gpu_bench")
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
        "--rehearse-gpu",
        choices=["h100", "h200"],
        default=None,
        help="--rehearse with this device's measured service times (default: $FG_REHEARSAL_GPU, else h100)",
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
    if args.rehearse_gpu and not args.rehearse:
        p.error("--rehearse-gpu chooses the simulated device of --rehearse: add --rehearse")
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
    # longer than a run: a looping file source resets every decoder of a process at once (a new
    # NVDEC session each, ~0.3 s), which real cameras never do; the window must not measure it
    clip_s = max(10, math.ceil(args.seconds) + 5)
    clip = args.clip_dir / f"bench_1080p30_6mbps_{clip_s}s.mp4"
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
            samples.make_clip(clip, 1920, 1080, fps=FPS, seconds=clip_s, bitrate=6_000_000)
    report["clip"] = {
        "path": str(clip),
        "spec": "640x360 30 fps H.264 2 s (cpu smoke)"
        if args.cpu_smoke
        else f"1920x1080 30 fps H.264 6 Mb/s {clip_s} s",
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
        if args.rehearse_gpu:  # spawned graph processes read it too
            os.environ[gpu_rehearsal.PRESET_ENV] = args.rehearse_gpu
        times = gpu_rehearsal.SimTimes.from_env()
        recording = gpu_rehearsal.record_outputs(clip, args.clip_dir / f"{clip.stem}_centerface.npz")
        os.environ[gpu_rehearsal.OUTPUTS_ENV] = str(recording)  # spawned graph processes read it too
        report["rehearsal"] = {
            "simulated_gpu": os.environ.get(gpu_rehearsal.PRESET_ENV) or "h100",
            "simulated_times_us": times.as_dict(),
            "ceiling_fps": round(1e6 / times.decode_us, 1),  # the simulated NVDEC, at any stream count
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
        if args.rehearse:
            ceiling[n] = {"fps": report["rehearsal"]["ceiling_fps"], "simulated": True}
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
            if r.get("stages_ms"):  # where the latency goes: p50/p95 queue wait + work per node, ms
                print(
                    "  stages p50/p95 ms: "
                    + ", ".join(
                        f"{nid} wait {f['queue_wait_ms']['p50']}/{f['queue_wait_ms']['p95']}"
                        f" work {f['work_ms']['p50']}/{f['work_ms']['p95']}"
                        for nid, f in r["stages_ms"].items()
                    )
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
