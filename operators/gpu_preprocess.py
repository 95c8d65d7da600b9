"""`preprocess.torch` and `preprocess.dali`: preprocess.cpu's transform, batched on the GPU.

Both take the same config as `preprocess.cpu` (`PreprocessConfig`) and produce the same tensors
within rounding: bilinear resize without antialiasing (OpenCV's INTER_LINEAR), rounded to
uint8 like OpenCV's output, placed at `letterbox_geometry`'s integer offsets on a canvas of
`pad_value`, then channel order, scale/mean/std, dtype and layout as `preprocess_image` does.

Frames may hold CUDA tensors (decode.nvdec) or numpy images (decode.pyav), which are uploaded.
`frame.tensor` becomes a torch tensor (one view per frame of the batch's tensor) on the frame's
GPU; `frame.letterbox` maps boxes back. Without CUDA, preprocess.torch runs on torch's CPU and
preprocess.dali on DALI's CPU operators (numpy out): slow, but the same numbers, for tests.
torch and DALI are imported at setup, never when this module is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from engine.errors import OperatorError
from engine.frame import Frame, Item, Letterbox
from engine.registry import Operator, OperatorContext
from operators.preprocess import PreprocessConfig, letterbox_geometry

INTERP_CHUNK = 8  # frames resized at once: bounds the float copy of full-size images
DALI_MAX_BATCH = 64  # a DALI pipeline's batch size; larger groups run in chunks


def import_torch(op: str) -> Any:
    """torch, or an OperatorError that says how to get it."""
    from engine.device import import_error

    why = import_error("torch")
    if why is not None:
        raise OperatorError(f"{op} needs torch: {why} (pip install torch)")
    import torch

    return torch


def needs_flip(pixel_format: str, cfg: PreprocessConfig) -> bool:
    """True when the frame's channel order is not the model's."""
    return (pixel_format == "rgb24") != (cfg.channels == "rgb")


def placement(src_w: int, src_h: int, cfg: PreprocessConfig) -> tuple[Letterbox, int, int, int, int]:
    """(geometry, resized width, resized height, x offset, y offset) of a source size."""
    geo = letterbox_geometry(src_w, src_h, cfg)
    if cfg.mode == "resize":
        return geo, cfg.width, cfg.height, 0, 0
    return geo, round(src_w * geo.scale), round(src_h * geo.scale), int(geo.pad_x), int(geo.pad_y)


def _frames(items: list[Item], op: str) -> list[Frame]:
    frames = [f for f in items if isinstance(f, Frame)]
    if len(frames) != len(items):
        raise TypeError(f"{op} takes frames, got {type(next(i for i in items if not isinstance(i, Frame)))}")
    return frames


def _groups(frames: list[Frame], device_of: Any) -> dict[tuple[Any, ...], list[Frame]]:
    """Frames that can share one batch: same device, size and pixel format."""
    groups: dict[tuple[Any, ...], list[Frame]] = {}
    for f in frames:
        h, w = int(f.image.shape[0]), int(f.image.shape[1])
        groups.setdefault((str(device_of(f.image)), h, w, f.pixel_format), []).append(f)
    return groups


class _Torch:
    """torch, the device numpy images go to, and tensor helpers."""

    def __init__(self, op: str) -> None:
        self.torch = import_torch(op)
        self.upload_device: Any = self.torch.device("cuda" if self.torch.cuda.is_available() else "cpu")

    def device_of(self, image: Any) -> Any:
        return image.device if isinstance(image, self.torch.Tensor) else self.upload_device

    def hwc(self, image: Any) -> Any:
        """An (H, W, 3) uint8 tensor on the image's device (numpy is uploaded)."""
        torch = self.torch
        if isinstance(image, torch.Tensor):
            return image
        t = torch.from_numpy(np.ascontiguousarray(image))
        return t.to(self.upload_device, non_blocking=False) if self.upload_device.type == "cuda" else t

    def keep_alive(self, images: list[Any]) -> None:
        """Tell the allocator CUDA images are in use on this thread's stream (decoder copies)."""
        torch = self.torch
        for image in images:
            if isinstance(image, torch.Tensor) and image.is_cuda:
                image.record_stream(torch.cuda.current_stream(image.device))


def normalize(batch: Any, pixel_format: str, cfg: PreprocessConfig, torch: Any) -> Any:
    """(B, 3, H, W) float 0..255 canvases -> the model tensors (channels, scale, mean/std, dtype, layout)."""
    if needs_flip(pixel_format, cfg):
        batch = batch.flip(1)
    if cfg.dtype == "uint8":
        out = batch.to(torch.uint8)
    else:
        out = batch * cfg.scale if cfg.scale != 1.0 else batch
        if any(cfg.mean) or any(s != 1.0 for s in cfg.std):
            mean = torch.tensor(cfg.mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
            out = (out - mean) / std
        out = out.to(getattr(torch, cfg.dtype))
    return out.permute(0, 2, 3, 1).contiguous() if cfg.layout == "hwc" else out.contiguous()


def torch_letterbox(
    images: list[Any], pixel_format: str, cfg: PreprocessConfig, torch: Any
) -> tuple[Any, Letterbox]:
    """Same-size (H, W, 3) uint8 tensors -> (B, ...) model tensors and their shared geometry."""
    import torch.nn.functional as F

    h, w = int(images[0].shape[0]), int(images[0].shape[1])
    geo, new_w, new_h, x0, y0 = placement(w, h, cfg)
    canvas = torch.full(
        (len(images), 3, cfg.height, cfg.width),
        float(int(cfg.pad_value)),
        dtype=torch.float32,
        device=images[0].device,
    )
    for i in range(0, len(images), INTERP_CHUNK):
        part = torch.stack(images[i : i + INTERP_CHUNK]).permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (h, w):
            part = F.interpolate(
                part, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
            )
            part = part.round_().clamp_(0, 255)  # OpenCV resizes uint8 to uint8
        canvas[i : i + INTERP_CHUNK, :, y0 : y0 + new_h, x0 : x0 + new_w] = part
    return normalize(canvas, pixel_format, cfg, torch), geo


class TorchPreprocess(Operator[PreprocessConfig]):
    """preprocess.cpu's transform with torch on the frames' GPU, one batch per source size."""

    consumes, produces = "frames", "+tensor"
    Config = PreprocessConfig
    batching = True

    def __init__(self, config: PreprocessConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.t: _Torch | None = None

    async def setup(self) -> None:
        self.t = await self.ctx.run_pinned(_Torch, "preprocess.torch")

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        frames = _frames(items, "preprocess.torch")
        if frames:
            await self.ctx.run_pinned(self._run, frames)
        return items

    def _run(self, frames: list[Frame]) -> None:
        t = self.t
        if t is None:
            raise OperatorError("preprocess.torch: process before setup")
        with t.torch.inference_mode():
            for group in _groups(frames, t.device_of).values():
                images = [t.hwc(f.image) for f in group]
                out, geo = torch_letterbox(images, group[0].pixel_format, self.config, t.torch)
                t.keep_alive(images)
                for i, f in enumerate(group):
                    f.tensor, f.letterbox = out[i], replace(geo)


class DaliPreprocess(Operator[PreprocessConfig]):
    """preprocess.cpu's transform as a DALI pipeline (resize, pad, normalize) per source size.

    DALI resizes (linear, no antialias), pads to the letterbox with a slice at the exact integer
    offsets and normalises with crop_mirror_normalize; pipelines are built on first use of a
    source size and reused. Without DALI, setup fails and names preprocess.torch instead.
    """

    consumes, produces = "frames", "+tensor"
    Config = PreprocessConfig
    batching = True

    def __init__(self, config: PreprocessConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.t: _Torch | None = None  # None: DALI on the CPU (no CUDA here), numpy in and out
        self.dali: Any = None
        self.pipes: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
        self.lock = threading.Lock()

    async def setup(self) -> None:
        await self.ctx.run_pinned(self._setup)

    def _setup(self) -> None:
        from engine.device import cuda_reason, import_error

        why = import_error("nvidia.dali")
        if why is not None:
            raise OperatorError(
                f"preprocess.dali needs NVIDIA DALI: {why} (pip install nvidia-dali-cuda130, or use "
                "preprocess.torch, which gives the same tensors)"
            )
        import nvidia.dali

        self.dali = nvidia.dali
        if cuda_reason() is None:
            self.t = _Torch("preprocess.dali")

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        frames = _frames(items, "preprocess.dali")
        if frames:
            await self.ctx.run_pinned(self._run, frames)
        return items

    def _device_of(self, image: Any) -> Any:
        return "cpu" if self.t is None else self.t.device_of(image)

    def _run(self, frames: list[Frame]) -> None:
        for (device, h, w, pixel_format), group in _groups(frames, self._device_of).items():
            pipe, lock = self._pipeline(str(device), w, h, pixel_format)
            geo = letterbox_geometry(w, h, self.config)
            for i in range(0, len(group), DALI_MAX_BATCH):
                chunk = group[i : i + DALI_MAX_BATCH]
                with lock:
                    out = self._run_pipe(pipe, [f.image for f in chunk])
                for j, f in enumerate(chunk):
                    f.tensor, f.letterbox = out[j], replace(geo)

    def _run_pipe(self, pipe: Any, images: list[Any]) -> Any:
        """Feed one batch, run, and return an owned (B, ...) torch tensor or numpy array."""
        t = self.t
        if t is None:
            pipe.feed_input("frames", [np.ascontiguousarray(im) for im in images], layout="HWC")
            (out,) = pipe.run()
            return np.array(out.as_tensor())
        with t.torch.inference_mode():
            # this pool thread may never have touched CUDA: make the device's primary context
            # current, or DALI fails on tensors NVDEC made (CUDA_ERROR_INVALID_CONTEXT)
            t.torch.cuda.set_device(self.config.gpu_id if hasattr(self.config, "gpu_id") else 0)
            t.torch.cuda.current_stream().synchronize()
            tensors = [t.hwc(im) for im in images]
            pipe.feed_input("frames", tensors, layout="HWC")
            (out,) = pipe.run()
            result = t.torch.from_dlpack(out.as_tensor()).clone()  # DALI reuses its buffers
            # the clone is only queued: finish it before the lock lets another run overwrite them
            t.torch.cuda.current_stream().synchronize()
            t.keep_alive(tensors)
            return result

    def _pipeline(self, device: str, w: int, h: int, pixel_format: str) -> tuple[Any, threading.Lock]:
        key = (device, w, h, needs_flip(pixel_format, self.config))
        with self.lock:
            if key not in self.pipes:
                self.pipes[key] = (self._build(device, w, h, key[3]), threading.Lock())
            return self.pipes[key]

    def _build(self, device: str, w: int, h: int, flip: bool) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        cfg = self.config
        gpu = device.startswith("cuda")
        device_id = (int(device.split(":")[1]) if ":" in device else 0) if gpu else None
        _, new_w, new_h, x0, y0 = placement(w, h, cfg)
        dtype = {"float32": types.FLOAT, "float16": types.FLOAT16, "uint8": types.UINT8}[cfg.dtype]
        if cfg.dtype == "uint8":
            mean, std = [0.0], [1.0]
        else:  # DALI computes (x - mean) / std; ours is (x * scale - mean) / std
            mean = [m / cfg.scale for m in cfg.mean]
            std = [s / cfg.scale for s in cfg.std]

        @pipeline_def(batch_size=DALI_MAX_BATCH, num_threads=2, device_id=device_id, prefetch_queue_depth=1)  # type: ignore[untyped-decorator]
        def letterbox() -> Any:
            x = fn.external_source(
                name="frames", device="gpu" if gpu else "cpu", layout="HWC", dtype=types.UINT8
            )
            if (new_w, new_h) != (w, h):
                x = fn.resize(
                    x, resize_x=new_w, resize_y=new_h, interp_type=types.INTERP_LINEAR, antialias=False
                )
            if cfg.mode == "letterbox" and (new_w, new_h) != (cfg.width, cfg.height):
                x = fn.slice(
                    x,
                    start=[-y0, -x0],
                    shape=[cfg.height, cfg.width],
                    axes=[0, 1],
                    out_of_bounds_policy="pad",
                    fill_values=float(int(cfg.pad_value)),
                )
            if flip:
                x = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.BGR)
            return fn.crop_mirror_normalize(
                x, dtype=dtype, mean=mean, std=std, output_layout="CHW" if cfg.layout == "chw" else "HWC"
            )

        pipe = letterbox()
        pipe.build()
        return pipe
