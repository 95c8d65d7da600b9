"""A golden set for face detectors: real photos with faces at known places, and scoring.

`golden_frames` pastes the face of scikit-image's astronaut photo at random positions and
scales onto 1080p backdrops made of other real photos (coffee, cat, rocket); the ground truth
is known by construction. `perturb` degrades a frame (low light, blur, noise, JPEG, occlusion)
so recall can be measured per condition; `match` and `recall_precision` score predictions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]
Perturbation = Literal["clean", "low_light", "blur", "noise", "jpeg", "occlusion"]
PERTURBATIONS: tuple[Perturbation, ...] = ("clean", "low_light", "blur", "noise", "jpeg", "occlusion")

# The astronaut's face in the 512x512 photo, as CenterFace itself boxes it: the median of its
# boxes when run (onnxruntime) on the photo resized to 256..1024 px squares (spread +-5 px).
# The hand-drawn region x 170..330, y 20..200 also holds hair and collar; CenterFace's
# WIDER FACE-style box runs from forehead to chin. tests/integration/test_golden_onnx.py
# re-checks this box against the model.
ASTRONAUT_FACE = (180.0, 60.0, 270.5, 178.0)
# The part of the photo that is pasted: the head with some context, the face well inside it.
_CROP = (120, 0, 330, 240)
FACE_HEIGHT_PX = (60, 300)


@functools.lru_cache(maxsize=8)
def _photo(name: str) -> Image:
    """A scikit-image sample photo as RGB uint8 (cached: callers must not modify it)."""
    from skimage import data  # dev/test dependency, imported only when the set is built

    return np.ascontiguousarray(getattr(data, name)()[:, :, :3], dtype=np.uint8)


def _resize(image: Image, width: int, height: int) -> Image:
    shrink = width * height < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(image, (width, height), interpolation=interp), np.uint8)


def _cover(image: Image, width: int, height: int) -> Image:
    """Scale `image` to cover width x height (aspect kept), centre-cropped."""
    h, w = image.shape[:2]
    s = max(width / w, height / h)
    big = _resize(image, max(width, round(w * s)), max(height, round(h * s)))
    y, x = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    return big[y : y + height, x : x + width]


def backdrop(rng: np.random.Generator, width: int, height: int) -> Image:
    """Side-by-side panels of real photos without faces (coffee, cat, rocket) in random order."""
    names = [str(n) for n in rng.permutation(["coffee", "chelsea", "rocket"])]
    edges = np.linspace(0, width, len(names) + 1).round().astype(int)
    panels = []
    for name, x0, x1 in zip(names, edges[:-1], edges[1:], strict=True):
        panel = _cover(_photo(name), int(x1 - x0), height)
        panels.append(panel[:, ::-1] if rng.random() < 0.5 else panel)
    return np.ascontiguousarray(np.concatenate(panels, axis=1))


def golden_frames(
    seed: int,
    n: int,
    width: int = 1920,
    height: int = 1080,
    face_height_px: tuple[float, float] = FACE_HEIGHT_PX,
) -> list[tuple[Image, FloatArray]]:
    """`n` RGB frames with 1-3 non-overlapping astronaut faces each, and their xyxy face boxes.

    Face heights are uniform in `face_height_px` (60..300 px); the same seed gives the same frames.
    """
    rng = np.random.default_rng(seed)
    cx0, cy0, cx1, cy1 = _CROP
    head = _photo("astronaut")[cy0:cy1, cx0:cx1]
    face = np.asarray(ASTRONAUT_FACE, np.float32) - np.asarray([cx0, cy0, cx0, cy0], np.float32)
    # a small frame cannot hold the largest heads: cap the face height at what fits (a 1080p
    # frame holds them all, so its frames do not change)
    fits = min(width / head.shape[1], height / head.shape[0]) * float(face[3] - face[1])
    hi = min(face_height_px[1], fits)
    face_height_px = (min(face_height_px[0], hi), hi)
    out: list[tuple[Image, FloatArray]] = []
    for _ in range(n):
        image = backdrop(rng, width, height)
        placed: list[tuple[int, int, int, int]] = []
        boxes: list[FloatArray] = []
        for _face in range(int(rng.integers(1, 4))):
            s = rng.uniform(*face_height_px) / float(face[3] - face[1])
            pw, ph = round(head.shape[1] * s), round(head.shape[0] * s)
            for _try in range(50):
                x, y = int(rng.integers(0, width - pw + 1)), int(rng.integers(0, height - ph + 1))
                if all(x + pw <= a or a + w <= x or y + ph <= b or b + h <= y for a, b, w, h in placed):
                    break
            else:
                continue  # no free place for a face this big: the frame gets fewer faces
            placed.append((x, y, pw, ph))
            image[y : y + ph, x : x + pw] = _resize(head, pw, ph)
            sx, sy = pw / head.shape[1], ph / head.shape[0]
            boxes.append(
                face * np.asarray([sx, sy, sx, sy], np.float32) + np.asarray([x, y, x, y], np.float32)
            )
        out.append((image, np.asarray(boxes, np.float32).reshape(-1, 4)))
    return out


def perturb(image: Image, kind: Perturbation, boxes: FloatArray | None = None, seed: int = 0) -> Image:
    """A degraded copy of an RGB frame; `occlusion` needs the face `boxes` (ground truth stays)."""
    if kind == "clean":
        return image.copy()
    if kind == "low_light":
        return np.asarray(np.round(image.astype(np.float32) * 0.35), np.uint8)
    if kind == "blur":
        return np.asarray(cv2.GaussianBlur(image, (0, 0), 3), np.uint8)
    if kind == "noise":
        noise = np.random.default_rng(seed).standard_normal(image.shape, np.float32)
        noise = noise * np.float32(12.0) + image
        return np.asarray(np.clip(noise, 0, 255).round(), np.uint8)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 15])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise RuntimeError("JPEG round trip failed")
        return np.ascontiguousarray(decoded[:, :, ::-1], dtype=np.uint8)
    if kind == "occlusion":
        if boxes is None:
            raise ValueError("occlusion needs the face boxes")
        out = image.copy()
        for x0, y0, x1, y1 in boxes:
            # a grey bar across the eyes: 30% of the face height, its full width
            top = y0 + 0.25 * (y1 - y0)
            out[round(top) : round(top + 0.3 * (y1 - y0)), round(x0) : round(x1)] = 128
        return out
    raise ValueError(f"unknown perturbation {kind!r}")


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9), np.float32)


def match(pred_xyxy: FloatArray, gt_xyxy: FloatArray, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): greedy one-to-one by highest IoU."""
    if len(pred_xyxy) == 0 or len(gt_xyxy) == 0:
        return 0, len(pred_xyxy), len(gt_xyxy)
    m = iou_matrix(pred_xyxy.astype(np.float32), gt_xyxy.astype(np.float32))
    tp = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        m[i, :], m[:, j] = -1.0, -1.0
        tp += 1
    return tp, len(pred_xyxy) - tp, len(gt_xyxy) - tp


def recall_precision(
    preds: Sequence[FloatArray], gts: Sequence[FloatArray], iou: float = 0.5
) -> tuple[float, float]:
    """Recall and precision over frames (pred and gt boxes per frame); 1.0 where undefined."""
    tp = fp = fn = 0
    for p, g in zip(preds, gts, strict=True):
        a, b, c = match(p, g, iou)
        tp, fp, fn = tp + a, fp + b, fn + c
    return (tp / (tp + fn) if tp + fn else 1.0), (tp / (tp + fp) if tp + fp else 1.0)
