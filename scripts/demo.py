"""`make demo`: the main job on embedded defaults, on a generated sample clip.

Makes a sample clip from a real photo (if none), runs face detection through a local Triton
(started for the run, stopped after), and says where the events are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.cli import main as framegraph
from engine.samples import make_clip

ROOT = Path(__file__).resolve().parents[1]


def run() -> int:
    clip = ROOT / "out/sample.mp4"
    if not clip.exists():
        print(f"demo: generating {clip.relative_to(ROOT)} (4 s, 1280x720, H.264)")
        make_clip(clip, 1280, 720, fps=30, seconds=4)
    out = ROOT / "out/demo"
    summary = out / "summary.json"
    code = framegraph(
        [
            "run",
            str(ROOT / "graphs/face_detect.yaml"),
            "--set",
            f"sources.0.url={clip}",
            "--output",
            str(out),
            "--summary-json",
            str(summary),
            "--progress-interval-s",
            "1",
        ]
    )
    if code != 0:
        return code
    events = out / "face_detect.jsonl"
    lines = events.read_text().splitlines() if events.exists() else []
    faces = sum(len(json.loads(line).get("detections", [])) for line in lines)
    print(f"\ndemo: {len(lines)} frames with faces, {faces} faces in all")
    print(f"demo: events  -> {events.relative_to(ROOT)}")
    print(f"demo: summary -> {summary.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
