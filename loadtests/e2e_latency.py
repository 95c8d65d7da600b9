"""End-to-end latency of detect -> track -> zones -> Kafka at 1, 4 and 8 real-time 720p streams.

    python loadtests/e2e_latency.py [--streams 1,4,8] [--seconds 15]

Each stream is the 720p sample clip looped at its frame rate (a camera). Live policies: packets
wait for the decoder (a GOP-aware drop when full), frames older than 500 ms are dropped before
preprocessing. Prints fps, drops and capture-to-publish latency p50/p95/p99 per stream count.
Needs Triton and the Kafka-protocol broker (scripts/services start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli import run_async
from engine.plan import SourcePlan, load_plan
from engine.runtime import RunOptions, Runtime
from engine.samples import make_clip

ROOT = Path(__file__).resolve().parents[1]


def run(streams: int, seconds: float, clip: Path, triton: str) -> dict[str, Any]:
    plan = load_plan(
        ROOT / "graphs/detect_track_publish.yaml",
        [
            f"sources.0.url={clip}",
            "sources.0.config={loop: true, realtime: true}",
            f"nodes.detect.config.url={triton}",
            "nodes.decode.queue={size: 64, policy: drop_oldest}",
            "nodes.preprocess.queue={size: 16, policy: latency, budget_ms: 500}",
        ],
    )
    seed = plan.sources[0]
    plan.sources = [
        SourcePlan(seed.spec.model_copy(update={"id": f"cam{i}"}), seed.cls, seed.config)
        for i in range(streams)
    ]
    plan.edges = [e for e in plan.edges if e.src != "cam0"]
    decode_queue = plan.nodes[0].spec.queue
    plan.edges += [type(e)(f"cam{i}", "decode", decode_queue) for i in range(streams) for e in plan.edges[:1]]
    runtime = Runtime(plan, RunOptions(output_dir=ROOT / "out/e2e"))

    async def timed() -> dict[str, Any]:
        asyncio.get_running_loop().call_later(seconds, runtime.stop)
        return await runtime.run()

    summary = run_async(timed())
    return {
        "streams": streams,
        "offered_fps": 30 * streams,
        "fps": summary["fps"],
        "dropped": sum(s["dropped"] for s in summary["streams"].values()),
        "latency_ms": summary["latency_ms"],
        "kafka": summary["nodes"]["publish"].get("events", {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--triton", default="127.0.0.1:8001")
    parser.add_argument("--json", type=Path, default=ROOT / "out/e2e_latency.json")
    args = parser.parse_args()
    clip = ROOT / "out/sample.mp4"
    if not clip.exists():
        make_clip(clip, 1280, 720, fps=30, seconds=4)
    results = []
    for n in (int(x) for x in args.streams.split(",")):
        results.append(run(n, args.seconds, clip, args.triton))
        print(json.dumps(results[-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
