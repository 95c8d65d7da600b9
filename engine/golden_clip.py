"""Golden video clips: real photos of faces moving over real backdrops, with known face boxes.

Built from the golden set's pieces (engine.golden): the astronaut's head is pasted at a known
scale and position onto a faceless backdrop, and moves along a straight path, bouncing off the
frame edges; paths may cross. Every frame can be degraded by a golden perturbation, and the
clip is encoded to H.264 with PyAV. Used by the redaction leak test and the deface comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.golden import (
    _CROP,
    ASTRONAUT_FACE,
    FloatArray,
    Image,
    Perturbation,
    _photo,
    _resize,
    backdrop,
    perturb,
)


def _paths(
    rng: np.random.Generator, faces: int, frames: int, width: int, height: int, heights: tuple[int, int]
) -> list[list[tuple[float, float, float]]]:
    """Per face, per frame: (x, y, scale) of the pasted head's top-left corner."""
    cx0, cy0, cx1, cy1 = _CROP
    face_h = ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1]
    out = []
    for _ in range(faces):
        s = float(rng.uniform(*heights)) / face_h
        pw, ph = (cx1 - cx0) * s, (cy1 - cy0) * s
        x, y = rng.uniform(0, width - pw), rng.uniform(0, height - ph)
        speed = rng.uniform(4, 14)
        angle = rng.uniform(0, 2 * np.pi)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        path = []
        for _f in range(frames):
            path.append((float(x), float(y), s))
            x, y = x + vx, y + vy
            if not 0 <= x <= width - pw:
                vx, x = -vx, float(np.clip(x, 0, width - pw))
            if not 0 <= y <= height - ph:
                vy, y = -vy, float(np.clip(y, 0, height - ph))
        out.append(path)
    return out


def moving_faces(
    seed: int,
    frames: int,
    width: int = 960,
    height: int = 540,
    faces: int = 3,
    face_heights: tuple[int, int] = (40, 160),
) -> list[tuple[Image, FloatArray]]:
    """`frames` RGB frames of `faces` astronaut heads moving over one backdrop, and their face boxes."""
    rng = np.random.default_rng(seed)
    base = backdrop(rng, width, height)
    cx0, cy0, cx1, cy1 = _CROP
    head = _photo("astronaut")[cy0:cy1, cx0:cx1]
    face = np.asarray(ASTRONAUT_FACE, np.float32) - np.asarray([cx0, cy0, cx0, cy0], np.float32)
    paths = _paths(rng, faces, frames, width, height, face_heights)
    out: list[tuple[Image, FloatArray]] = []
    for f in range(frames):
        image = base.copy()
        boxes = []
        for path in paths:
            x, y, s = path[f]
            pw, ph = round(head.shape[1] * s), round(head.shape[0] * s)
            xi, yi = round(x), round(y)
            image[yi : yi + ph, xi : xi + pw] = _resize(head, pw, ph)
            sx, sy = pw / head.shape[1], ph / head.shape[0]
            boxes.append(
                face * np.asarray([sx, sy, sx, sy], np.float32) + np.asarray([xi, yi, xi, yi], np.float32)
            )
        out.append((image, np.asarray(boxes, np.float32).reshape(-1, 4)))
    return out


def write_clip(
    path: str | Path,
    frames: list[tuple[Image, FloatArray]],
    perturbation: Perturbation | Sequence[Perturbation] = "clean",
    fps: int = 30,
    crf: int = 18,
) -> Path:
    """Encode frames (perturbed) to an H.264 MP4 (yuv420p, no B-frames); returns the path.

    `perturbation` is one for every frame, or one per frame.
    """
    kinds = [perturbation] * len(frames) if isinstance(perturbation, str) else list(perturbation)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        height, width = frames[0][0].shape[:2]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "bf": "0", "preset": "veryfast", "g": str(fps)}
        for i, (image, boxes) in enumerate(frames):
            picture = perturb(image, kinds[i], boxes, seed=i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def read_frames(path: str | Path) -> list[Image]:
    """Every frame of a video file as RGB uint8 (for checking outputs)."""
    with av.open(str(path)) as container:
        return [np.asarray(f.to_ndarray(format="rgb24"), np.uint8) for f in container.decode(video=0)]
