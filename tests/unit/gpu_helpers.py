"""Helpers shared by the CPU tests of the GPU operators (test_gpu_config, test_infer_torch)."""

from __future__ import annotations

import pytest

from engine import device
from engine.testing import collect_frames as collect

__all__ = ["collect", "needs"]


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every module is installed; the reason names the first missing one."""
    missing = [m for m in modules if not device.installed(m)]
    name = {"nvidia.dali": "DALI"}.get(missing[0], missing[0]) if missing else ""
    return pytest.mark.skipif(bool(missing), reason=f"{name} not installed")
