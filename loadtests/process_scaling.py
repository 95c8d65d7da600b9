"""`framegraph run --processes K` against one process, on the same streams, in one run.

    python loadtests/process_scaling.py [--streams 8] [--processes 2] [--frames 150] [--rounds 3]

A graph whose per-frame work is mostly Python (decode 320x192 H.264 slices, preprocess,
track-free JSONL events) holds the GIL, so one process uses about one core however many
the machine has. Each round runs the same graph over S looped file streams as fast as it goes,
first in 1 process, then in K, with the `framegraph` CLI a user runs; the figure is the ratio
of the medians of running fps (frames over each process's run time, summed; start-up is in
`wall_s` and `fps`) and the cores each setting kept busy. Rounds alternate so that noise hits
both alike. Prints one JSON line per round and the ratio; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.samples import make_clip  # noqa: E402
from engine.shards import cpu_count  # noqa: E402


def graph(clip: Path, streams: int) -> str:
    sources = "\n".join(f'  - {{id: cam{i}, url: "{clip}", config: {{loop: true}}}}' for i in range(streams))
    return f"""\
name: scaling
sources:
{sources}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources], config: {{thread_type: slice}}}}
  - {{id: pre, op: preprocess.cpu, inputs: [decode], config: {{width: 160, height: 96}}}}
  - {{id: out, op: sink.jsonl, inputs: [pre], config: {{path: "frames.jsonl", mode: frames}}}}
"""


def run_once(graph_path: Path, processes: int, frames: int, out_dir: Path) -> dict[str, float]:
    summary_path = out_dir / f"summary-{processes}.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(graph_path),
            "--processes",
            str(processes),
            "--max-frames",
            str(frames),
            "--output",
            str(out_dir),
            "--summary-json",
            str(summary_path),
            "--progress-interval-s",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"framegraph run --processes {processes} failed:\n{result.stderr}")
    summary = json.loads(summary_path.read_text())
    total = summary["frames_out"]
    fps = round(total / wall_s, 1)  # start-up (spawning, imports, setup) included
    return {
        "processes": processes,
        "frames": total,
        "wall_s": round(wall_s, 2),
        "fps": fps,
        "fps_running": summary["fps"],  # frames over each process's run time, summed
        "cores_busy": round(cpu_s / wall_s, 2),  # CPU seconds per second: 1 process is GIL-bound
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--processes", type=int, default=0, help="0: one per core")
    p.add_argument("--frames", type=int, default=150, help="per stream")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    k = args.processes or cpu_count()
    with tempfile.TemporaryDirectory(prefix="fg-scaling-") as tmp:
        work = Path(tmp)
        clip = make_clip(work / "clip.mp4", 320, 192, fps=30, seconds=2)
        graph_path = work / "scaling.yaml"
        graph_path.write_text(graph(clip, args.streams))
        rounds = []
        for r in range(args.rounds):
            one = run_once(graph_path, 1, args.frames, work)
            many = run_once(graph_path, k, args.frames, work)
            rounds.append({"round": r, "one": one, "many": many})
            print(json.dumps(rounds[-1]), flush=True)
    one_fps = statistics.median(x["one"]["fps_running"] for x in rounds)
    many_fps = statistics.median(x["many"]["fps_running"] for x in rounds)
    result = {
        "streams": args.streams,
        "processes": k,
        "cores": cpu_count(),
        "fps_1_process": one_fps,
        f"fps_{k}_processes": many_fps,
        "ratio_of_medians": round(many_fps / one_fps, 3),
        "rounds": rounds,
    }
    print(
        f"{args.streams} streams, {args.frames} frames each: 1 process {one_fps} fps, "
        f"{k} processes {many_fps} fps: ratio {result['ratio_of_medians']} on {cpu_count()} cores"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
