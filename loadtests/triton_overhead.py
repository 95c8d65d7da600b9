"""Detection through Triton versus the same model in-process, and the batches Triton really saw.

    python loadtests/triton_overhead.py [--url 127.0.0.1:8001] [--seconds 8] [--json out/triton_overhead.json]

1. Serving overhead: CenterFace at 384x640, batch 4 and 8, in a tight loop through infer.triton
   (gRPC + system shared memory, 2 requests in flight) versus onnxruntime in this process.
   Rounds alternate; the ratio is Triton fps / in-process fps (goal >= 0.8 at batch >= 4).
2. Batching across streams: graphs/face_detect.yaml with 1, 4 and 8 camera-like streams (the
   sample clip looped at 30 fps, freshest frames kept); the batch sizes Triton executed, from its
   own statistics (not ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from engine.cli import run_async
from engine.frame import Frame
from engine.metrics import NodeMetrics
from engine.plan import load_plan
from engine.registry import OperatorContext
from engine.runtime import RunOptions, Runtime
from engine.samples import make_clip
from operators.infer import TritonConfig, TritonInfer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "triton_models/centerface/1/centerface.onnx"
OUTPUTS = ["537", "538", "539", "540"]


def inprocess_fps(batch: np.ndarray, seconds: float) -> float:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    session.run(OUTPUTS, {"input.1": batch})
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(OUTPUTS, {"input.1": batch})
        n += len(batch)
    return n / (time.perf_counter() - started)


async def triton_fps(url: str, batch: np.ndarray, seconds: float, in_flight: int = 2) -> float:
    op = TritonInfer(
        TritonConfig(url=url, model="centerface"), OperatorContext("bench", NodeMetrics("bench"))
    )
    await op.setup()
    frames = [Frame("s", i, i, 0, None, tensor=t) for i, t in enumerate(batch)]
    try:
        await op.process_batch(list(frames))
        n, started = 0, time.perf_counter()

        async def worker() -> None:
            nonlocal n
            while time.perf_counter() - started < seconds:
                await op.process_batch(list(frames))
                n += len(frames)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return n / (time.perf_counter() - started)
    finally:
        await op.teardown()


def batch_stats(url: str) -> dict[int, int]:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics("centerface", as_json=True)
    out: dict[int, int] = {}
    for entry in stats["model_stats"][0].get("batch_stats", []):
        out[int(entry["batch_size"])] = int(entry["compute_infer"]["count"])
    return out


def streams_run(url: str, clip: Path, streams: int, seconds: float) -> dict[str, Any]:
    """N camera-like streams (looped, paced at 30 fps, freshest frames kept) for `seconds`."""
    overrides = [
        f"nodes.detect.config.url={url}",
        f"sources.0.url={clip}",
        "sources.0.config={loop: true, realtime: true}",
        "nodes.decode.queue.policy=drop_oldest",
    ]
    plan = load_plan(ROOT / "graphs/face_detect.yaml", overrides)
    spec = plan.sources[0].spec
    plan.sources = [
        type(plan.sources[0])(
            spec.model_copy(update={"id": f"cam{i}"}), plan.sources[0].cls, plan.sources[0].config
        )
        for i in range(streams)
    ]
    plan.edges = [e for e in plan.edges if e.src != spec.id]
    plan.edges += [type(plan.edges[0])(f"cam{i}", "decode", plan.nodes[0].spec.queue) for i in range(streams)]
    before = batch_stats(url)
    runtime = Runtime(plan, RunOptions(output_dir=ROOT / "out/bench"))

    async def timed() -> dict[str, Any]:
        asyncio.get_running_loop().call_later(seconds, runtime.stop)
        return await runtime.run()

    summary = run_async(timed())
    after = batch_stats(url)
    executed = {b: after.get(b, 0) - before.get(b, 0) for b in after if after.get(b, 0) > before.get(b, 0)}
    total = sum(executed.values())
    return {
        "streams": streams,
        "fps": summary["fps"],
        "frames": summary["frames_out"],
        "dropped": sum(s["dropped"] for s in summary["streams"].values()),
        "latency_ms": summary["latency_ms"],
        "triton_executions_by_batch_size": dict(sorted(executed.items())),
        "triton_mean_batch": round(sum(b * c for b, c in executed.items()) / total, 2) if total else 0,
        "engine_mean_batch": summary["nodes"]["detect"].get("mean_batch"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "out/triton_overhead.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"model": "centerface 3x384x640 FP32", "overhead": [], "streams": []}
    for size in (4, 8):
        batch = rng.uniform(0, 255, (size, 3, 384, 640)).astype(np.float32)
        local, served = [], []
        for _ in range(args.rounds):
            local.append(inprocess_fps(batch, args.seconds))
            served.append(asyncio.run(triton_fps(args.url, batch, args.seconds)))
        result["overhead"].append(
            {
                "batch": size,
                "inprocess_fps": [round(v, 1) for v in local],
                "triton_fps": [round(v, 1) for v in served],
                "ratio_of_medians": round(statistics.median(served) / statistics.median(local), 3),
            }
        )
        print(json.dumps(result["overhead"][-1]), flush=True)
    clip = ROOT / "out/sample.mp4"
    if not clip.exists():
        make_clip(clip, 1280, 720, fps=30, seconds=4)
    for streams in (1, 4, 8):
        result["streams"].append(streams_run(args.url, clip, streams, args.seconds))
        print(json.dumps(result["streams"][-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
