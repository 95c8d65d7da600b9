"""Shared fixtures: generated media (real photos encoded to H.264 by PyAV)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.samples import make_clip


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip_720p(media_dir: Path) -> Path:
    """2 s of 1280x720 30 fps H.264 MP4: the astronaut photo moving over a blurred backdrop."""
    return make_clip(media_dir / "astro720.mp4", 1280, 720, fps=30, seconds=2)


@pytest.fixture(scope="session")
def clip_ts(media_dir: Path) -> Path:
    """The same content in MPEG-TS, which survives truncation like a live stream does."""
    return make_clip(media_dir / "astro.ts", 640, 360, fps=30, seconds=2)
