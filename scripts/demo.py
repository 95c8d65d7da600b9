"""`make demo`: the main job on embedded defaults, on a generated sample clip.

Makes a sample clip from a real photo (if none), runs the face-redaction job on it through a
local Triton (started for the run, stopped after): faces detected, tracked and blurred, the
redacted video written as MP4; then says where the redacted video and the events are.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
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
    events = out / "face_redaction.jsonl"
    events.unlink(missing_ok=True)  # sink.jsonl appends: count this run's events only
    code = framegraph(
        [
            "run",
            str(ROOT / "graphs/face_redaction.yaml"),
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
    video = out / "cam0.mp4"
    raised = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    treatments = Counter(e["treatment"] for e in raised if e["type"] == "redaction")
    tracks = sum(e["type"] == "track.start" for e in raised)
    print(f"\ndemo: {sum(treatments.values())} frames: {dict(treatments)}; {tracks} face tracks")
    print(f"demo: redacted video -> {video.relative_to(ROOT)}")
    print(f"demo: events         -> {events.relative_to(ROOT)}")
    print(f"demo: summary        -> {summary.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
