"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.samples import make_clip


@pytest.fixture(scope="module")
def small_h264(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s 320x240 H.264 clip of the moving photo (one GOP)."""
    return make_clip(tmp_path_factory.mktemp("gpu") / "small.mp4", 320, 240, fps=30, seconds=2, gop=30)
