"""infer.triton with torch tensors (preprocess.torch) against a real Triton: same outputs as numpy.

On this CPU machine the tensors are CPU torch tensors, so they go through system shared memory;
the CUDA path (CUDA shared memory) is checked in tests/gpu where a GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import device
from engine.errors import OperatorError
from engine.testing import CollectOperator, run_graph
from operators.triton_shm import cuda_shm_reason

pytestmark = pytest.mark.skipif(not device.installed("torch"), reason="torch not installed")


def graph(url: str, clip: Path, pre: str, shm: str) -> str:
    batch = ", batch: {max_batch: 4, max_delay_ms: 20}" if pre != "preprocess.cpu" else ""
    return f"""\
name: tensors_test
sources: [{{id: cam0, url: "{clip}"}}]
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: pre, op: {pre}, inputs: [decode]{batch}, config: {{width: 640, height: 384}}}}
  - {{id: detect, op: infer.triton, inputs: [pre], batch: {{max_batch: 4, max_delay_ms: 5}},
     config: {{url: "{url}", model: centerface, shared_memory: {shm}}}}}
  - {{id: out, op: test.collect, inputs: [detect], queue: {{size: 512}}}}
"""


async def test_torch_tensors_give_the_outputs_numpy_tensors_give(triton_url: str, clip_720p: Path) -> None:
    outputs = {}
    for pre, shm in (
        ("preprocess.torch", "system"),
        ("preprocess.torch", "off"),
        ("preprocess.cpu", "system"),
    ):
        runtime, summary = await run_graph(graph(triton_url, clip_720p, pre, shm), max_frames=6)
        out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
        assert len(out.items) == 6
        events = summary["nodes"]["detect"].get("events", {})
        assert events.get("degraded_frames", 0) == 0
        if pre == "preprocess.torch":
            assert type(out.items[0].tensor).__module__.startswith("torch")  # type: ignore[union-attr]
        if shm == "system":
            assert events.get("output_shm_batches", 0) >= 1
        outputs[pre, shm] = [f.outputs for f in out.items]  # type: ignore[union-attr]
    torch_shm, torch_grpc, numpy_shm = outputs.values()
    for a, b, c in zip(torch_shm, torch_grpc, numpy_shm, strict=True):
        assert a is not None
        assert b is not None
        assert c is not None
        assert set(a) == set(b) == set(c) == {"537", "538", "539", "540"}
        for name in a:  # the same tensors: the same outputs, whichever way they travelled
            np.testing.assert_array_equal(a[name], b[name])
        # the two preprocesses differ by < 2 levels of 0..255: face heatmaps nearly equal
        np.testing.assert_allclose(a["537"], c["537"], atol=0.02)


async def test_cuda_shared_memory_without_its_library_is_a_clear_setup_error(
    triton_url: str, clip_720p: Path
) -> None:
    why = cuda_shm_reason()
    if why is None:
        pytest.skip("tritonclient's CUDA shared memory works here (cuda-python is installed)")
    with pytest.raises(OperatorError, match=r"shared_memory: cuda needs tritonclient's CUDA shared memory"):
        await run_graph(graph(triton_url, clip_720p, "preprocess.cpu", "cuda"), max_frames=2)
