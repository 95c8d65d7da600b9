"""Helpers shared by the CPU tests of the GPU operators (test_gpu_config, test_infer_torch)."""

from __future__ import annotations

from typing import Any

import pytest

from engine import device
from engine.frame import Frame
from engine.testing import CollectOperator, run_graph


async def collect(graph: str, **options: Any) -> tuple[dict[str, list[Frame]], dict[str, Any]]:
    """Run `graph` (its collecting node is `out`): its frames by stream, and the run's summary."""
    runtime, summary = await run_graph(graph, **options)
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    by_stream: dict[str, list[Frame]] = {}
    for item in out.items:
        assert isinstance(item, Frame)
        by_stream.setdefault(item.stream_id, []).append(item)
    return by_stream, summary


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every module is installed; the reason names the first missing one."""
    missing = [m for m in modules if not device.installed(m)]
    name = {"nvidia.dali": "DALI"}.get(missing[0], missing[0]) if missing else ""
    return pytest.mark.skipif(bool(missing), reason=f"{name} not installed")
