"""`preprocess.cpu`: resize or letterbox, normalize, and lay out frames for a model (OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from engine.frame import Frame, Item, Letterbox
from engine.registry import Operator
from engine.spec import StrictModel


class PreprocessConfig(StrictModel):
    """The model-input transform; GPU preprocess operators accept the same fields."""

    width: int = Field(640, ge=16, le=8192, description="Model input width in pixels.")
    height: int = Field(384, ge=16, le=8192, description="Model input height in pixels.")
    mode: Literal["letterbox", "resize"] = Field(
        "letterbox", description="letterbox keeps the aspect ratio and pads; resize stretches."
    )
    pad_value: float = Field(0.0, ge=0, le=255, description="Pixel value of letterbox padding.")
    channels: Literal["rgb", "bgr"] = Field("rgb", description="Channel order the model expects.")
    scale: float = Field(1.0, gt=0, description="Multiply pixels (0..255) by this first.")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="Subtracted after scale.")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="Divided after mean.")
    layout: Literal["chw", "hwc"] = Field("chw", description="Tensor layout per frame.")
    dtype: Literal["float32", "float16", "uint8"] = Field("float32", description="Tensor dtype.")


def fed_tensor(upstream: list[Any]) -> tuple[list[int], str] | None:
    """Shape and dtype of one frame's tensor as the preprocess config among a node's `upstream`
    configs makes it (preprocess.cpu/torch/dali share these fields); None: no preprocess feeds it."""
    for up in upstream:
        if all(hasattr(up, a) for a in ("width", "height", "layout", "dtype")):
            shape = [3, up.height, up.width] if up.layout == "chw" else [up.height, up.width, 3]
            return shape, str(up.dtype)
    return None


def letterbox_geometry(src_w: int, src_h: int, cfg: PreprocessConfig) -> Letterbox:
    """Scale and padding that fit a src_w x src_h frame into the model input."""
    if cfg.mode == "resize":
        return Letterbox(cfg.width / src_w, 0.0, 0.0, src_w, src_h, scale_y=cfg.height / src_h)
    scale = min(cfg.width / src_w, cfg.height / src_h)
    new_w, new_h = round(src_w * scale), round(src_h * scale)
    return Letterbox(scale, (cfg.width - new_w) // 2, (cfg.height - new_h) // 2, src_w, src_h)


def preprocess_image(
    image: np.ndarray, pixel_format: str, cfg: PreprocessConfig
) -> tuple[np.ndarray, Letterbox]:
    """One HWC uint8 image -> model tensor, and the geometry to map boxes back."""
    h, w = image.shape[:2]
    geo = letterbox_geometry(w, h, cfg)
    if cfg.mode == "resize":
        canvas = cv2.resize(image, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
    else:
        new_w, new_h = round(w * geo.scale), round(h * geo.scale)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        canvas = np.full((cfg.height, cfg.width, 3), cfg.pad_value, np.uint8)
        x, y = int(geo.pad_x), int(geo.pad_y)
        canvas[y : y + new_h, x : x + new_w] = resized
    if (pixel_format == "rgb24") != (cfg.channels == "rgb"):
        canvas = canvas[:, :, ::-1]
    tensor: np.ndarray = canvas
    if cfg.dtype != "uint8":
        tensor = canvas.astype(np.float32) * np.float32(cfg.scale)
        if any(cfg.mean) or any(s != 1.0 for s in cfg.std):
            tensor = (tensor - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
        tensor = tensor.astype(cfg.dtype, copy=False)
    tensor = tensor.transpose(2, 0, 1) if cfg.layout == "chw" else tensor
    return np.ascontiguousarray(tensor), geo


class CpuPreprocess(Operator[PreprocessConfig]):
    """Sets `Frame.tensor` and `Frame.letterbox`; the image itself is left untouched."""

    consumes, produces = "frames", "+tensor"
    Config = PreprocessConfig

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"preprocess.cpu takes frames, got {type(item).__name__}")
        item.tensor, item.letterbox = await self.ctx.run_blocking(
            preprocess_image, item.image, item.pixel_format, self.config
        )
        return (item,)
