"""Decode-only graph versus a bare PyAV decode loop on the same 1080p clip, in one run.

    python loadtests/decode_ratio.py [--seconds 10] [--rounds 3] [--json out/decode_ratio.json]

Prints both frame rates and their ratio (goal >= 0.9). Rounds alternate so that machine noise
hits both sides alike; the figure is the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import av

from engine.cli import run_async
from engine.plan import load_plan
from engine.runtime import RunOptions, Runtime
from engine.samples import make_clip

ROOT = Path(__file__).resolve().parents[1]


def bare_pyav_fps(clip: Path) -> tuple[float, int]:
    """The ceiling: demux, threaded decode and RGB conversion in a tight loop."""
    started = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            for frame in packet.decode():
                frame.to_ndarray(format="rgb24")
                frames += 1
    return frames / (time.perf_counter() - started), frames


def engine_fps(clip: Path) -> tuple[float, int]:
    """`framegraph run graphs/decode_only.yaml` on the same clip, timed from setup to the end."""
    plan = load_plan(ROOT / "graphs/decode_only.yaml", [f"sources.0.url={clip}"])
    started = time.perf_counter()
    summary = run_async(Runtime(plan, RunOptions()).run())
    frames = int(summary["streams"]["cam0"]["frames_out"])
    return frames / (time.perf_counter() - started), frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "out/decode_ratio.json")
    args = parser.parse_args()
    clip = ROOT / f"out/bench_1080p_{int(args.seconds)}s.mp4"
    if not clip.exists():
        make_clip(clip, 1920, 1080, fps=30, seconds=args.seconds, bitrate=6_000_000)
    bare, eng = [], []
    for _ in range(args.rounds):
        fps, n_bare = bare_pyav_fps(clip)
        bare.append(fps)
        fps, n_eng = engine_fps(clip)
        eng.append(fps)
        if n_bare != n_eng:
            print(f"frame counts differ: bare {n_bare}, engine {n_eng}", file=sys.stderr)
            return 1
    result = {
        "clip": "1920x1080 30 fps H.264 6 Mb/s, generated",
        "frames": n_bare,
        "bare_pyav_fps": [round(v, 1) for v in bare],
        "engine_fps": [round(v, 1) for v in eng],
        "ratio_of_medians": round(statistics.median(eng) / statistics.median(bare), 3),
        "goal": 0.9,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
