"""infer.torch on the CPU (TorchScript and eager runtimes against ONNX Runtime, the trace check and
its fallback, setup errors) and loadtests/gpu_bench.py's graphs and ceiling reuse."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from engine.errors import FramegraphError
from engine.testing import run_graph
from tests.unit.gpu_helpers import collect, needs

ROOT = Path(__file__).resolve().parents[2]
CENTERFACE = ROOT / "triton_models/centerface/1/centerface.onnx"


def infer_graph(clip: Path, pre: str | None, infer: str, batch: str = "", collect: bool = True) -> str:
    """decode.pyav -> preprocess.cpu (config `pre`; None: no preprocess) -> infer.torch (config
    `infer`, batch options `batch`) -> test.collect `out` (if `collect`)."""
    detect_input = "decode"
    nodes = ["  - {id: decode, op: decode.pyav, inputs: [sources]}"]
    if pre is not None:
        nodes.append(f"  - {{id: pre, op: preprocess.cpu, inputs: [decode], config: {{{pre}}}}}")
        detect_input = "pre"
    batching = f", batch: {{{batch}}}" if batch else ""
    nodes.append(
        f"  - {{id: detect, op: infer.torch, inputs: [{detect_input}]{batching}, config: {{{infer}}}}}"
    )
    if collect:
        nodes.append("  - {id: out, op: test.collect, inputs: [detect], queue: {size: 100}}")
    return (
        'name: infer_test\nsources: [{id: cam0, url: "'
        + str(clip)
        + '"}]\nnodes:\n'
        + "\n".join(nodes)
        + "\n"
    )


@needs("torch", "onnx2torch", "onnxruntime")
@pytest.mark.parametrize("runtime", ["torchscript", "eager"])
async def test_infer_torch_on_cpu_equals_onnxruntime(
    small_h264: Path, runtime: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    import onnxruntime as ort

    graph = infer_graph(
        small_h264,
        "width: 320, height: 256",
        f"device: cpu, max_batch: 2, runtime: {runtime}",
        batch="max_batch: 3, max_delay_ms: 50",
    )
    with caplog.at_level(logging.INFO, logger="framegraph.infer_torch"):
        by_stream, summary = await collect(graph, max_frames=5)
    frames = by_stream["cam0"]
    assert f"centerface.onnx on cpu fp32 {runtime}" in caplog.text
    assert "torchscript_refused" not in summary["nodes"]["detect"].get("events", {})
    session = ort.InferenceSession(str(CENTERFACE), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert len(frames) == 5
    for f in frames:
        assert f.outputs is not None
        assert list(f.outputs) == names == ["537", "538", "539", "540"]
        want = session.run(names, {session.get_inputs()[0].name: f.tensor[None]})
        for name, w in zip(names, want, strict=True):
            assert f.outputs[name].shape == w.shape[1:]
            np.testing.assert_allclose(f.outputs[name], w[0], rtol=1e-3, atol=2e-3)


@needs("torch", "onnx2torch")
async def test_infer_torch_rejects_a_preprocess_of_the_wrong_layout(small_h264: Path) -> None:
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    graph = infer_graph(small_h264, "layout: hwc", "device: cpu, output_names: ['537']", collect=False)
    with pytest.raises(FramegraphError, match=r"takes \[3, -1, -1\] .* makes \[384, 640, 3\]"):
        await run_graph(graph, max_frames=1)


@needs("torch", "onnx2torch")
async def test_infer_torch_runs_eager_when_the_trace_is_refused(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose TorchScript trace fails (or differs from the eager module) still runs, eagerly;
    the refusal is counted."""
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    from operators.infer_torch import TorchModel

    def refuse(self: TorchModel, shape: list[int]) -> float:
        raise FramegraphError("the trace differs from the eager module by 0.5 (relative)")

    monkeypatch.setattr(TorchModel, "trace", refuse)
    graph = infer_graph(small_h264, "width: 320, height: 256", "device: cpu")
    by_stream, summary = await collect(graph, max_frames=3)
    assert summary["nodes"]["detect"]["events"]["torchscript_refused"] == 1
    assert all(f.outputs is not None for f in by_stream["cam0"])


@needs("torch", "onnx2torch")
def test_the_trace_check_catches_a_trace_that_baked_in_the_batch() -> None:
    """TorchModel.trace compares the trace with the eager module at another batch size: a module
    whose trace fixes the batch (a reshape to the traced shape) is refused, the eager one kept."""
    import torch

    from operators.infer_torch import TorchModel

    class BatchBaked(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(int(x.shape[0]), -1).sum(dim=1)  # int(): the trace records a constant

    model = TorchModel.__new__(TorchModel)
    model.torch, model.device, model.dtype = torch, torch.device("cpu"), torch.float32
    model.model, model.traced, model.graphs = BatchBaked(), False, None
    with pytest.raises(FramegraphError, match="trace"):
        model.trace([3, 4, 4])
    assert model.traced is False
    assert isinstance(model.model, BatchBaked)


async def test_infer_torch_missing_model_file_is_a_clear_error(small_h264: Path) -> None:
    graph = infer_graph(small_h264, "width: 64, height: 64", "onnx_path: no/such.onnx", collect=False)
    with pytest.raises(FramegraphError, match=r"model file 'no/such.onnx' not found .*setup_models.py"):
        await run_graph(graph, max_frames=1)


@pytest.mark.parametrize("infer", ["torch", "triton"])
def test_the_gpu_bench_graphs_validate(monkeypatch: pytest.MonkeyPatch, infer: str) -> None:
    """Both detection variants of loadtests/gpu_bench.py's graph pass validation on a CPU machine,
    so a typo costs no GPU minutes; triton mode serves the TorchScript model through CUDA shm."""
    from engine.plan import build_plan
    from engine.yamlsource import load_text
    from loadtests import bench_graph

    monkeypatch.setenv(bench_graph.INFER_ENV, infer)
    monkeypatch.setenv(bench_graph.TRITON_URL_ENV, "127.0.0.1:18001")
    plan = build_plan(load_text(bench_graph.graph_yaml(Path("/tmp/clip.mp4"), [0, 1, 2], "native"), "bench"))
    detect = next(n for n in plan.nodes if n.spec.id == "detect")
    assert detect.op == f"infer.{infer}"
    config = detect.spec.config
    if infer == "triton":
        assert config["model"] == bench_graph.TRITON_MODEL
        assert config["shared_memory"] == "cuda"
        assert config["url"] == "127.0.0.1:18001"
    else:
        assert config["fp16"] is True


def test_a_later_bench_reuses_the_measured_decode_ceilings_only(tmp_path: Path) -> None:
    """gpu_check measures the NVDEC ceiling once; the next benchmark takes the measured counts
    from its JSON and measures (or skips) the rest, never reusing a skipped entry."""
    import json

    from loadtests.gpu_bench import earlier_ceiling

    path = tmp_path / "gpu_bench.json"
    path.write_text(json.dumps({"ceiling": {"64": {"fps": 2634.2}, "96": {"skipped": "time budget"}}}))
    assert earlier_ceiling(path) == {"64": {"fps": 2634.2}}
    assert earlier_ceiling(tmp_path / "absent.json") == {}
    assert earlier_ceiling(None) == {}
