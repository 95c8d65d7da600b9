"""Camera media: one generated H.264 clip, copied once per camera, and a corrupted copy."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from engine.samples import make_clip


def clip(cache: Path, width: int, height: int, fps: int = 30, seconds: float = 10.0) -> Path:
    """A looping clip of the astronaut photo moving (engine.samples.make_clip), made once per size."""
    path = cache / f"clip_{width}x{height}_{fps}_{seconds:g}s.mp4"
    if not path.exists():
        bitrate = max(1_000_000, int(4_000_000 * width * height / (1280 * 720)))
        tmp = path.with_suffix(".tmp.mp4")
        make_clip(tmp, width, height, fps=fps, seconds=seconds, bitrate=bitrate, gop=fps)
        tmp.replace(path)
    return path


def camera(media_dir: Path, name: str, source: Path) -> Path:
    """`media_dir/<name>.mp4`: what the RTSP server serves at /<name>."""
    media_dir.mkdir(parents=True, exist_ok=True)
    target = media_dir / f"{name}.mp4"
    shutil.copyfile(source, target)
    return target


def corrupt(path: Path, start: float = 0.45, end: float = 0.55, chunks: int = 12, size: int = 256) -> int:
    """Overwrite `chunks` runs of `size` random bytes between `start` and `end` of the file.

    The container's index (moov) is left alone, so the demuxer still finds every sample: the
    damage reaches the decoder as corrupt H.264 packets, a few times per loop of the clip.
    Returns the number of bytes changed.
    """
    data = bytearray(path.read_bytes())
    rng = random.Random(7)
    lo, hi = int(len(data) * start), int(len(data) * end)
    for _ in range(chunks):
        at = rng.randrange(lo, max(lo + 1, hi - size))
        data[at : at + size] = rng.randbytes(size)
    path.write_bytes(bytes(data))
    return chunks * size
