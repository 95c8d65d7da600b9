"""Golden sets on disk: images plus COCO-style labels, read by `source.images` and `framegraph eval`.

The format (a subset of COCO detection, plus a `slice` per image):

    DIR/annotations.json
      images:      [{id, file_name, width, height, slice}]   file_name is relative to DIR/images/;
                                                              slice names a condition (clean,
                                                              low_light, blur, noise, jpeg,
                                                              occlusion, small, ...); default "all"
      annotations: [{id, image_id, category_id, bbox: [x, y, w, h], area?, iscrowd?}]  pixels
      categories:  [{id, name}]      a detection of class_id i is the i-th category listed
    DIR/images/<file_name>           PNG or JPEG, RGB
    DIR/gate.json                    optional: eval gate thresholds (see engine/eval_gate.py)

The stream order is the order of `images`. `build_golden_set` writes such a set from
engine/golden.py's generator (faces of a real photo pasted on real photos, perturbed per slice).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import FramegraphError
from engine.golden import PERTURBATIONS, Perturbation, golden_frames, perturb

ANNOTATIONS = "annotations.json"
IMAGES = "images"
SLICES: tuple[str, ...] = (*PERTURBATIONS, "small")
SMALL_FACE_PX = (30.0, 60.0)  # face heights of the `small` slice (the regular slices: 60..300 px)


class _Loose(BaseModel):
    """COCO files carry extra fields (license, coco_url, ...): they are kept, not rejected."""

    model_config = ConfigDict(extra="allow", frozen=True)


class GoldenImage(_Loose):
    id: int
    file_name: str = Field(min_length=1)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    slice: str = "all"


class GoldenAnnotation(_Loose):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float | None = None
    iscrowd: int = 0


class GoldenCategory(_Loose):
    id: int
    name: str


class GoldenSet(_Loose):
    """A validated annotations.json; `root` is the directory it was read from."""

    images: list[GoldenImage] = Field(min_length=1)
    annotations: list[GoldenAnnotation]
    categories: list[GoldenCategory] = Field(min_length=1)
    info: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> GoldenSet:
        ids = [im.id for im in self.images]
        if len(set(ids)) != len(ids):
            raise ValueError("image ids must be unique")
        cats = {c.id for c in self.categories}
        known = set(ids)
        for a in self.annotations:
            if a.image_id not in known:
                raise ValueError(f"annotation {a.id}: unknown image_id {a.image_id}")
            if a.category_id not in cats:
                raise ValueError(f"annotation {a.id}: unknown category_id {a.category_id}")
        return self

    def slices(self) -> dict[str, list[int]]:
        """Image ids per slice, in first-seen order."""
        out: dict[str, list[int]] = {}
        for im in self.images:
            out.setdefault(im.slice, []).append(im.id)
        return out

    def category_of_class(self, class_id: int) -> int | None:
        """The category id of a detector class id (its position in `categories`), or None."""
        return self.categories[class_id].id if 0 <= class_id < len(self.categories) else None

    def boxes_xyxy(self, image_id: int) -> np.ndarray:
        """Ground-truth boxes of one image as (N, 4) xyxy float32."""
        boxes = [a.bbox for a in self.annotations if a.image_id == image_id]
        xywh = np.asarray(boxes, np.float32).reshape(-1, 4)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    def to_coco(self) -> dict[str, Any]:
        """The dict pycocotools' COCO() takes: area and iscrowd filled in."""
        anns = [
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "bbox": list(a.bbox),
                "area": a.area if a.area is not None else a.bbox[2] * a.bbox[3],
                "iscrowd": a.iscrowd,
            }
            for a in self.annotations
        ]
        images = [{"id": im.id, "width": im.width, "height": im.height} for im in self.images]
        categories = [{"id": c.id, "name": c.name} for c in self.categories]
        return {"images": images, "annotations": anns, "categories": categories}


class EvalInputError(FramegraphError):
    """What eval was given cannot be evaluated (golden set, baseline, graph, options): `framegraph
    eval` exits 2 for it, not 1 (a run that failed)."""


def annotations_path(location: str | Path) -> Path:
    """DIR -> DIR/annotations.json; a path to a .json file is taken as is."""
    path = Path(location)
    return path if path.suffix == ".json" else path / ANNOTATIONS


def load_golden_set(location: str | Path) -> GoldenSet:
    """Read and validate a golden set (directory or annotations file); EvalInputError if invalid."""
    path = annotations_path(location)
    try:
        return GoldenSet.model_validate(json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise EvalInputError(f"golden set: {path} not found (make one with scripts/make_golden.py)") from e
    except OSError as e:
        raise EvalInputError(f"golden set: {path} cannot be read: {e.strerror or e}") from e
    except (ValueError, ValidationError) as e:
        raise EvalInputError(f"golden set: {path} is invalid: {e}") from e


def image_path(location: str | Path, image: GoldenImage) -> Path:
    return annotations_path(location).parent / IMAGES / image.file_name


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_golden_set(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    width: int = 1920,
    height: int = 1080,
    slices: tuple[str, ...] = SLICES,
) -> GoldenSet:
    """Write `n` images (round-robin over `slices`) and annotations.json under `out_dir`.

    Perturbation slices degrade frames of golden_frames(seed); `small` draws frames of its own
    (seed + 1) whose faces are SMALL_FACE_PX high. The same arguments give the same files.
    """
    unknown = [s for s in slices if s not in SLICES]
    if unknown or not slices:
        raise ValueError(f"unknown slices {unknown}; known: {', '.join(SLICES)}")
    kinds = [slices[i % len(slices)] for i in range(n)]
    regular = iter(golden_frames(seed, sum(k != "small" for k in kinds), width, height))
    small = iter(golden_frames(seed + 1, kinds.count("small"), width, height, SMALL_FACE_PX))
    root = Path(out_dir)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, kind in enumerate(kinds):
        base, boxes = next(small) if kind == "small" else next(regular)
        image = base if kind == "small" else perturb(base, cast(Perturbation, kind), boxes, seed=i)
        name = f"{i:05d}_{kind}.png"
        cv2.imwrite(str(root / IMAGES / name), image[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height, "slice": kind})
        for x0, y0, x1, y1 in boxes.tolist():
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            bbox = [round(x0, 2), round(y0, 2), w, h]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": bbox, "area": w * h}
            )
    info = {
        "description": "framegraph golden set: astronaut faces on real photos (scikit-image)",
        "generator": "scripts/make_golden.py",
        "seed": seed,
        "slices": list(slices),
    }
    doc = {"info": info, "images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}
    (root / ANNOTATIONS).write_text(json.dumps(doc, indent=1))
    return GoldenSet.model_validate(doc)
