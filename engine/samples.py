"""Generated test media: H.264 clips made from real photos that scikit-image ships."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def photo() -> np.ndarray:
    """A real photo with a face (scikit-image's astronaut), RGB uint8.

    Where scikit-image is absent (the GPU image), FG_PHOTO names a PNG of the same photo.
    """
    if os.environ.get("FG_PHOTO"):
        image = cv2.imread(os.environ["FG_PHOTO"], cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"FG_PHOTO={os.environ['FG_PHOTO']} is not a readable image")
        return np.ascontiguousarray(image[:, :, ::-1])
    from skimage import data  # dev/test dependency; imported only when media is generated

    return np.asarray(data.astronaut())  # type: ignore[no-untyped-call]


def scene(width: int, height: int, index: int, fps: float, backdrop: np.ndarray) -> np.ndarray:
    """Frame `index`: the photo moving slowly over a blurred backdrop of itself."""
    face = photo_cached()
    size = int(min(width, height) * 0.45)
    patch = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    t = index / fps
    x = int((width - size) * (0.5 + 0.4 * np.sin(t * 0.7)))
    y = int((height - size) * (0.5 + 0.3 * np.cos(t * 0.5)))
    frame = backdrop.copy()
    frame[y : y + size, x : x + size] = patch
    return frame


_PHOTO: np.ndarray | None = None


def photo_cached() -> np.ndarray:
    global _PHOTO
    if _PHOTO is None:
        _PHOTO = photo()
    return _PHOTO


def make_clip(
    path: str | Path,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    seconds: float = 2.0,
    bitrate: int = 4_000_000,
    gop: int = 30,
) -> Path:
    """Encode an H.264 MP4 (yuv420p, no B-frames) of a real photo moving; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    backdrop = cv2.GaussianBlur(cv2.resize(photo_cached(), (width, height)), (0, 0), 12)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"g": str(gop), "bf": "0", "preset": "veryfast", "tune": "zerolatency"}
        for i in range(int(seconds * fps)):
            image = scene(width, height, i, fps, backdrop)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out
