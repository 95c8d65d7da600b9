"""No unredacted frame written: CenterFace (engine.leakcheck, in-process) over the MP4s a run wrote.

The cameras show engine.samples' scene: the astronaut photo moving over a heavily blurred,
full-frame copy of itself. That backdrop holds a blurred face which the detector scores
0.18-0.23 in the input (below the graph's 0.2 often enough that it is not redacted) and up
to ~0.37 once the real face next to it is blurred (engine/leakcheck.py describes the effect).
A detection on that static backdrop face (IoU >= 0.5 with where the detector finds it on the
backdrop alone) is counted apart as `backdrop_hits`, not as a leak; any other face is a leak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from engine.golden import iou_matrix
from engine.leakcheck import CenterFaceOnnx
from engine.samples import photo_cached

THRESHOLD = 0.3  # the judge's threshold: tests/integration/test_redaction.py's (the graph detects at 0.2)
BACKDROP_IOU = 0.5


def backdrop_faces(detector: CenterFaceOnnx, width: int, height: int) -> np.ndarray:
    """Boxes of the faces the detector sees, even faintly, on the scene's backdrop alone."""
    backdrop = cv2.GaussianBlur(cv2.resize(photo_cached(), (width, height)), (0, 0), 12)  # as make_clip
    boxes, _ = detector.detect(np.ascontiguousarray(backdrop), 0.05)
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def check_videos(
    video_dir: Path, every: int, threshold: float = THRESHOLD, per_file: int = 400
) -> dict[str, Any]:
    """Every `every`-th frame of each MP4 under `video_dir` (at most about `per_file` frames of a
    file: a long soak's files are sampled more thinly): frames where a face is still found."""
    detector = CenterFaceOnnx(threads=2)
    backdrops: dict[tuple[int, int], np.ndarray] = {}
    files: dict[str, Any] = {}
    for path in sorted(video_dir.glob("*.mp4")):
        frames = checked = leaked = backdrop_hits = 0
        worst = 0.0
        where: list[tuple[int, list[float], float]] = []
        try:
            with av.open(str(path)) as container:
                step = max(every, -(-int(container.streams.video[0].frames or 0) // per_file))
                for i, vf in enumerate(container.decode(video=0)):
                    frames += 1
                    if i % step:
                        continue
                    checked += 1
                    image = np.asarray(vf.to_ndarray(format="rgb24"), np.uint8)
                    size = (image.shape[1], image.shape[0])
                    if size not in backdrops:
                        backdrops[size] = backdrop_faces(detector, *size)
                    boxes, score = detector.detect(image, threshold)
                    if not len(score):
                        continue
                    on_backdrop = np.zeros(len(score), bool)
                    if len(backdrops[size]):
                        on_backdrop = (
                            iou_matrix(np.asarray(boxes, np.float32), backdrops[size]).max(1) >= BACKDROP_IOU
                        )
                    backdrop_hits += int(on_backdrop.any())
                    if (~on_backdrop).any():
                        leaked += 1
                        worst = max(worst, float(score[~on_backdrop].max()))
                        if len(where) < 10:
                            k = int(np.argmax(np.where(on_backdrop, -1.0, score)))
                            where.append(
                                (i, [round(float(v), 1) for v in boxes[k]], round(float(score[k]), 3))
                            )
        except av.error.FFmpegError as e:  # an unreadable file is a failure too: counted as leaking
            files[path.stem] = {"error": f"{type(e).__name__}: {e}", "leaked_frames": 1}
            continue
        files[path.stem] = {
            "frames": frames,
            "every": step,
            "checked": checked,
            "leaked_frames": leaked,
            "max_score": round(worst, 3),
            "backdrop_hits": backdrop_hits,
            "where": where,
        }
    return {
        "threshold": threshold,
        "every": every,
        "files": files,
        "checked": sum(f.get("checked", 0) for f in files.values()),
        "leaked_frames": sum(f.get("leaked_frames", 0) for f in files.values()),
        "backdrop_hits": sum(f.get("backdrop_hits", 0) for f in files.values()),
    }
