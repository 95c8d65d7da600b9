"""Scores of one eval run: precision, recall and mAP@0.5 per class and per slice, and leak rate.

mAP comes from pycocotools (COCOeval, bbox, at the single IoU threshold 0.5, every area, up to
100 detections per image), and so do the matches behind precision and recall: a detection is a
true positive when COCOeval matched it to a ground-truth box at IoU >= 0.5. Precision and
recall are at the graph's operating point (its own score threshold); mAP sweeps the scores of
the detections the graph kept. A value with nothing to measure (no labels, no detections) is None.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.golden import match
from engine.golden_set import GoldenSet

IOU = 0.5


@dataclass
class Prediction:
    """What the graph said about one image (source-frame pixels)."""

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    score: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _counts(tp: int, fp: int, n_gt: int, ap: float | None) -> dict[str, Any]:
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, n_gt),
        "map50": None if ap is None else round(ap, 4),
        "tp": tp,
        "fp": fp,
        "fn": n_gt - tp,
        "labels": n_gt,
    }


def _coco(dataset: dict[str, Any]) -> Any:
    coco = importlib.import_module("pycocotools.coco").COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(golden: GoldenSet, preds: Mapping[int, Prediction]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for image_id, p in preds.items():
        for (x0, y0, x1, y1), s, c in zip(
            p.xyxy.tolist(), p.score.tolist(), p.class_id.tolist(), strict=True
        ):
            cat = golden.category_of_class(int(c))
            if cat is not None:
                bbox = [x0, y0, x1 - x0, y1 - y0]
                det = {"id": len(out) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox}
                out.append({**det, "area": bbox[2] * bbox[3], "score": s, "iscrowd": 0})
    return out


def _evaluate(gt: Any, dt: Any, image_ids: list[int], categories: Mapping[int, str]) -> dict[str, Any]:
    """COCOeval over `image_ids`: the scope's totals and one entry per category."""
    cocoeval = importlib.import_module("pycocotools.cocoeval")
    e = cocoeval.COCOeval(gt, dt, "bbox")
    e.params.imgIds = image_ids
    e.params.iouThrs = np.asarray([IOU])
    e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = [[0.0, 1e10]], ["all"], [100]
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
        e.accumulate()
    counts = {c: [0, 0, 0] for c in e.params.catIds}  # tp, fp, labels
    for img in e.evalImgs:
        if img is None:
            continue
        dt_ignore = np.asarray(img["dtIgnore"][0], bool)
        matched = np.asarray(img["dtMatches"][0]) > 0
        c = counts[img["category_id"]]
        c[0] += int(np.sum(matched & ~dt_ignore))
        c[1] += int(np.sum(~matched & ~dt_ignore))
        c[2] += int(np.sum(~np.asarray(img["gtIgnore"], bool)))
    per_class: dict[str, Any] = {}
    aps: list[float] = []
    for k, cat in enumerate(e.params.catIds):
        curve = e.eval["precision"][0, :, k, 0, 0]
        ap = float(np.mean(curve[curve > -1])) if counts[cat][2] and np.any(curve > -1) else None
        if ap is not None:
            aps.append(ap)
        per_class[categories[cat]] = _counts(counts[cat][0], counts[cat][1], counts[cat][2], ap)
    tp, fp, n_gt = (sum(c[i] for c in counts.values()) for i in range(3))
    return {**_counts(tp, fp, n_gt, float(np.mean(aps)) if aps else None), "per_class": per_class}


def score_detections(golden: GoldenSet, preds: Mapping[int, Prediction]) -> dict[str, Any]:
    """overall (with per_class) and per_slice scores; images without a prediction count as empty."""
    dataset = golden.to_coco()
    gt = _coco(dataset)
    dets = _detections(golden, preds)
    dt = _coco({**dataset, "annotations": dets})
    categories = {c.id: c.name for c in golden.categories}
    overall = _evaluate(gt, dt, [im.id for im in golden.images], categories)
    per_slice = {name: _evaluate(gt, dt, ids, categories) for name, ids in golden.slices().items()}
    return {"overall": overall, "per_slice": per_slice}


def score_leaks(golden: GoldenSet, found: Mapping[int, np.ndarray], iou: float = 0.3) -> dict[str, Any]:
    """Faces still found on redacted frames: labelled faces matched (IoU >= `iou`) by a detection.

    `found` maps image ids that came out of the redaction to the boxes a detector found on them;
    images missing from it were withheld (nothing went out) and are counted apart.
    """
    faces = leaked = stray = 0
    per_slice: dict[str, list[int]] = {}
    for im in golden.images:
        if im.id not in found:
            continue
        tp, fp, fn = match(found[im.id].astype(np.float32), golden.boxes_xyxy(im.id), iou)
        faces, leaked, stray = faces + tp + fn, leaked + tp, stray + fp
        s = per_slice.setdefault(im.slice, [0, 0])
        s[0], s[1] = s[0] + tp + fn, s[1] + tp
    return {
        "faces": faces,
        "leaked": leaked,
        "leak_rate": _ratio(leaked, faces),
        "other_detections": stray,
        "withheld_images": sum(im.id not in found for im in golden.images),
        "match_iou": iou,
        "per_slice": {
            k: {"faces": f, "leaked": n, "leak_rate": _ratio(n, f)} for k, (f, n) in per_slice.items()
        },
    }
