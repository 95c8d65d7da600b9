"""`source.images`: a golden set's images, in order, as one stream of decoded RGB frames.

Feeds `framegraph eval` (which puts it where a graph's source and decoder were), and any graph
that should see still images as a stream. Each frame carries `meta` image_id, file_name and
slice, so results can be matched to the labels; `pts` counts 1/1000 s at `fps` (30 when unpaced).
"""

from __future__ import annotations

import asyncio
from fractions import Fraction

import cv2
import numpy as np
from pydantic import Field

from engine.errors import SourceError
from engine.frame import Control, ControlKind, Frame, StreamInfo, now_ns
from engine.golden_set import GoldenImage, image_path, load_golden_set
from engine.registry import Emit, Source
from engine.spec import StrictModel

_TIME_BASE = Fraction(1, 1000)


class ImageSourceConfig(StrictModel):
    """Options of `source.images`."""

    annotations: str = Field(
        "", description="A golden set directory or its annotations.json; empty: the source's url."
    )
    fps: float = Field(0.0, ge=0, description="Emit at this rate like a camera; 0: as fast as taken.")


def read_rgb(path: str, image: GoldenImage) -> np.ndarray:
    """An image file as RGB uint8; SourceError when it is missing or not the labelled size."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SourceError(f"source.images: cannot read {path}")
    if bgr.shape[:2] != (image.height, image.width):
        raise SourceError(
            f"source.images: {path} is {bgr.shape[1]}x{bgr.shape[0]}, labelled {image.width}x{image.height}"
        )
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


class ImageSource(Source[ImageSourceConfig]):
    """Control START, one Frame per image (capture_ns: when it was emitted), Control END."""

    produces = "frames"
    Config = ImageSourceConfig

    async def run(self, emit: Emit) -> None:
        cfg, sid = self.config, self.ctx.stream_id
        location = cfg.annotations or self.ctx.url
        golden = await asyncio.to_thread(load_golden_set, location)
        first = golden.images[0]
        fps = cfg.fps or 30.0
        info = StreamInfo(sid, "raw", first.width, first.height, cfg.fps, _TIME_BASE, url=str(location))
        await emit(Control(ControlKind.START, sid, info))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for seq, image in enumerate(golden.images):
            if self.ctx.stop.is_set() or (self.ctx.max_frames is not None and seq >= self.ctx.max_frames):
                break
            pixels = await asyncio.to_thread(read_rgb, str(image_path(location, image)), image)
            if cfg.fps:
                await asyncio.sleep(max(0.0, t0 + seq / cfg.fps - loop.time()))
            frame = Frame(sid, seq, round(seq * 1000 / fps), now_ns(), pixels)
            frame.meta.update(image_id=image.id, file_name=image.file_name, slice=image.slice)
            await emit(frame)
        await emit(Control(ControlKind.END, sid))
