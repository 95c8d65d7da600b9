"""The GPU path against the CPU path on a CUDA machine: NVDEC frames, GPU preprocess, detections.

Skipped as a whole without torch CUDA, a GPU or PyNvVideoCodec. Without scikit-image (the GPU
image lacks it) the clips are made from the photo in $FG_PHOTO (loadtests/gpu_bench.py
--export-photo writes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import device

_why = device.cuda_reason() or device.import_error("PyNvVideoCodec")
if _why is not None:
    pytest.skip(f"needs a CUDA GPU, torch with CUDA and PyNvVideoCodec: {_why}", allow_module_level=True)

from engine.frame import Frame  # noqa: E402
from engine.testing import collect_frames as collect  # noqa: E402
from operators.preprocess import PreprocessConfig, preprocess_image  # noqa: E402

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
CENTERFACE = ROOT / "triton_models/centerface/1/centerface.onnx"


def decode_graph(clip: Path, op: str, config: str = "", streams: int = 1) -> str:
    sources = "\n".join(f'  - {{id: cam{i}, url: "{clip}"}}' for i in range(streams))
    return f"""\
name: nvdec_gpu
sources:
{sources}
nodes:
  - {{id: decode, op: {op}, inputs: [sources], workers: {streams}, config: {{{config}}}}}
  - {{id: out, op: test.collect, inputs: [decode], queue: {{size: 1000}}}}
"""


@pytest.mark.parametrize("latency", ["native", "low"])
async def test_nvdec_frames_equal_pyav_frames(clip_720p: Path, latency: str) -> None:
    got, summary = await collect(decode_graph(clip_720p, "decode.nvdec", f"latency: {latency}", streams=3))
    want, _ = await collect(decode_graph(clip_720p, "decode.pyav"))
    assert summary["nodes"]["decode"]["dropped"] == 0
    reference = want["cam0"]
    assert len(reference) == 60
    for sid in ("cam0", "cam1", "cam2"):
        frames = got[sid]
        assert [f.pts for f in frames] == [f.pts for f in reference]
        assert [f.seq for f in frames] == list(range(60))
        for g, w in zip(frames, reference, strict=True):
            assert g.image.is_cuda
            assert tuple(g.image.shape) == (720, 1280, 3)
            assert str(g.image.dtype) == "torch.uint8"
            diff = np.abs(g.image.cpu().numpy().astype(np.int16) - w.image.astype(np.int16)).mean()
            assert diff < 4.0, (sid, g.seq, diff)  # an H100 gave up to 3.001 (YUV->RGB rounding)


PRE_CONFIGS = [
    {},
    {
        "width": 640,
        "height": 640,
        "pad_value": 114,
        "channels": "bgr",
        "scale": 1 / 255,
        "mean": (0.4, 0.5, 0.6),
    },
    {"width": 333, "height": 200, "dtype": "uint8", "layout": "hwc"},
    {"width": 320, "height": 320, "mode": "resize", "dtype": "float16", "std": (2.0, 3.0, 4.0)},
]


def yaml_config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in config.items())


@pytest.mark.parametrize("decoder", ["decode.nvdec", "decode.pyav"])
@pytest.mark.parametrize("op", ["preprocess.torch", "preprocess.dali"])
@pytest.mark.parametrize("config", PRE_CONFIGS)
async def test_gpu_preprocess_equals_preprocess_cpu(
    clip_720p: Path, op: str, decoder: str, config: dict[str, Any]
) -> None:
    if op == "preprocess.dali" and not device.dali_available():
        pytest.skip(f"DALI not available: {device.dali_reason()}")
    graph = f"""\
name: pre_gpu
sources: [{{id: cam0, url: "{clip_720p}"}}]
nodes:
  - {{id: decode, op: {decoder}, inputs: [sources]}}
  - {{id: pre, op: {op}, inputs: [decode], batch: {{max_batch: 8, max_delay_ms: 20}},
     config: {{{yaml_config(config)}}}}}
  - {{id: out, op: test.collect, inputs: [pre], queue: {{size: 100}}}}
"""
    frames = (await collect(graph, max_frames=12))[0]["cam0"]
    assert len(frames) == 12
    cfg = PreprocessConfig.model_validate(config)
    unit = 1.0 if cfg.dtype == "uint8" else cfg.scale / min(cfg.std)
    for f in frames:
        image = f.image.cpu().numpy() if hasattr(f.image, "cpu") else f.image
        want, geo = preprocess_image(image, "rgb24", cfg)
        assert f.tensor.is_cuda
        got = f.tensor.cpu().numpy()
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        diff = np.abs(got.astype(np.float32) - want.astype(np.float32)).max() / unit
        assert diff < 2.0, (f.seq, diff)
        assert f.letterbox == geo


def detect_graph(clip: Path, decode: str, pre: str, infer: str, frames_cap: int = 64) -> str:
    batch = "" if pre == "preprocess.cpu" else "batch: {max_batch: 8, max_delay_ms: 5}, "
    return f"""\
name: detect_gpu
sources: [{{id: cam0, url: "{clip}"}}]
nodes:
  - {{id: decode, op: {decode}, inputs: [sources]}}
  - {{id: pre, op: {pre}, inputs: [decode], {batch}config: {{width: 640, height: 384}}}}
  - {{id: detect, op: infer.torch, inputs: [pre], batch: {{max_batch: 8, max_delay_ms: 5}},
     config: {{{infer}, max_batch: 8}}}}
  - {{id: post, op: postprocess.centerface, inputs: [detect]}}
  - {{id: out, op: test.collect, inputs: [post], queue: {{size: {frames_cap}}}}}
"""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_boxes(got: np.ndarray, want: np.ndarray) -> list[float]:
    """IoU of each box in `got` with its best unmatched box in `want` (greedy)."""
    free = list(range(len(want)))
    ious = []
    for box in got:
        best = max(free, key=lambda j: iou(box, want[j]))
        ious.append(iou(box, want[best]))
        free.remove(best)
    return ious


async def gpu_detections(clip: Path, n: int) -> list[Frame]:
    graph = detect_graph(clip, "decode.nvdec", "preprocess.torch", "device: cuda, fp16: true")
    frames = (await collect(graph, max_frames=n))[0]["cam0"]
    assert len(frames) == n
    for f in frames:
        assert f.detections is not None
        assert not f.detections.degraded
    return frames


def assert_boxes_agree(ious: list[float], n_frames: int) -> None:
    """Every box found by both; 90% within IoU 0.98, the rest off by at most one heatmap cell.

    CenterFace boxes sit on its 4-pixel heatmap grid: where two cells score almost alike, any
    rounding (fp16, batch size, one level of colour) can move the peak one cell, which is an
    IoU of about 0.9 on the 60-pixel faces of this clip.
    """
    assert len(ious) >= n_frames  # the astronaut is found in every frame
    close = sum(v >= 0.98 for v in ious) / len(ious)
    assert close >= 0.9, (close, sorted(ious)[:5])
    assert min(ious) >= 0.85, sorted(ious)[:5]


async def test_gpu_detections_equal_cpu_detections_of_the_same_frames(clip_720p: Path) -> None:
    """decode.nvdec -> preprocess.torch -> infer.torch (cuda fp16) -> postprocess.centerface gives
    the outputs and boxes of preprocess.cpu + infer.torch (cpu fp32) on the same decoded frames."""
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    from operators.infer_torch import TorchModel
    from operators.postprocess import decode_centerface

    frames = await gpu_detections(clip_720p, 30)
    cpu_model = TorchModel(CENTERFACE, "cpu", 0, False)
    cfg = PreprocessConfig(width=640, height=384)
    ious: list[float] = []
    for f in frames:
        assert f.detections is not None
        assert f.outputs is not None
        tensor, geo = preprocess_image(f.image.cpu().numpy(), "rgb24", cfg)
        out = cpu_model.run([tensor], cpu_model.output_names)
        heat = np.abs(f.outputs["537"] - out["537"][0]).max()
        assert heat < 0.02, (f.seq, heat)
        xyxy, _, _ = decode_centerface(*(out[n][0] for n in ("537", "538", "539", "540")))
        want = geo.to_source(xyxy)
        assert len(f.detections) == len(want), (f.seq, f.detections.xyxy, want)
        ious += match_boxes(f.detections.xyxy, want)
    assert_boxes_agree(ious, len(frames))


async def test_gpu_pipeline_detections_match_cpu_pipeline(clip_720p: Path) -> None:
    """The whole GPU graph against decode.pyav -> preprocess.cpu -> infer.torch (cpu fp32).

    NVDEC's YUV->RGB conversion differs from FFmpeg's by about one level on top of fp16.
    """
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    n = 30
    gpu = await gpu_detections(clip_720p, n)
    cpu_graph = detect_graph(clip_720p, "decode.pyav", "preprocess.cpu", "device: cpu")
    cpu = (await collect(cpu_graph, max_frames=n))[0]["cam0"]
    assert len(cpu) == n
    ious: list[float] = []
    for g, c in zip(gpu, cpu, strict=True):
        assert g.seq == c.seq
        assert g.detections is not None
        assert c.detections is not None
        assert len(g.detections) == len(c.detections), (g.seq, g.detections.xyxy, c.detections.xyxy)
        ious += match_boxes(g.detections.xyxy, c.detections.xyxy)
    assert_boxes_agree(ious, n)


@pytest.mark.parametrize("model", ["centerface", "centerface_torch"])
async def test_cuda_tensors_reach_triton_through_cuda_shared_memory(clip_720p: Path, model: str) -> None:
    """decode.nvdec -> preprocess.torch -> infer.triton (shared_memory: cuda): the batches go
    device to device into CUDA shared memory and give the outputs the same tensors give when
    they travel inside the gRPC messages (copied to the host). centerface runs on ONNX Runtime
    (CPU); centerface_torch is the TorchScript model on the server's GPU (configs/gpu.pbtxt, fp16,
    inputs left on the GPU), whose heatmap must also match ONNX Runtime's on the CPU."""
    import os

    from operators.triton_local import LocalTriton
    from operators.triton_shm import cuda_shm_reason

    why = cuda_shm_reason()
    if why is not None:
        pytest.skip(f"tritonclient's CUDA shared memory is unavailable: {why} (pip install cuda-python)")
    url = os.environ.get("FG_TRITON_GRPC_URL", "")
    local = None if url else LocalTriton()
    if local is not None:
        try:
            url = await local.acquire()
        except Exception as e:
            pytest.skip(f"no Triton server on this GPU machine ({e}); set FG_TRITON_GRPC_URL")
    try:
        frames = {mode: await _cudashm_frames(clip_720p, url, mode, model) for mode in ("cuda", "off")}
    finally:
        if local is not None:
            await local.release()
    for fa, fb in zip(frames["cuda"], frames["off"], strict=True):
        a, b = fa.outputs, fb.outputs
        assert a is not None
        assert b is not None
        for name in a:
            if model == "centerface":
                np.testing.assert_array_equal(a[name], b[name])
            else:  # fp16 on the GPU: the same model, batches may differ in how they were formed
                np.testing.assert_allclose(a[name], b[name], atol=2e-2)
    if model == "centerface_torch" and CENTERFACE.is_file():
        import onnxruntime as ort

        session = ort.InferenceSession(str(CENTERFACE), providers=["CPUExecutionProvider"])
        for f in frames["cuda"]:
            want = session.run(["537"], {"input.1": f.tensor.float().cpu().numpy()[None]})[0][0]
            assert np.abs(f.outputs["537"] - want).max() < 0.02, f.seq


async def _cudashm_frames(clip: Path, url: str, mode: str, model: str) -> list[Frame]:
    graph = f"""\
name: cudashm
sources: [{{id: cam0, url: "{clip}"}}]
nodes:
  - {{id: decode, op: decode.nvdec, inputs: [sources]}}
  - {{id: pre, op: preprocess.torch, inputs: [decode], batch: {{max_batch: 4, max_delay_ms: 5}},
     config: {{width: 640, height: 384}}}}
  - {{id: detect, op: infer.triton, inputs: [pre], batch: {{max_batch: 4, max_delay_ms: 5}},
     config: {{url: "{url}", model: {model}, shared_memory: {mode}}}}}
  - {{id: out, op: test.collect, inputs: [detect], queue: {{size: 64}}}}
"""
    by_stream, summary = await collect(graph, max_frames=8)
    frames = by_stream["cam0"]
    assert len(frames) == 8
    assert all(f.tensor.is_cuda for f in frames)
    events = summary["nodes"]["detect"].get("events", {})
    assert events.get("degraded_frames", 0) == 0
    if mode == "cuda":
        assert events.get("cuda_shm_batches", 0) >= 1, events
        assert events.get("cuda_host_copies", 0) == 0, events
    return frames


@pytest.mark.parametrize("runtime", ["eager", "torchscript"])
def test_cuda_graphs_give_the_eager_outputs_for_every_batch_size(runtime: str) -> None:
    """infer.torch with cuda_graphs: CenterFace replayed from captured graphs (batches padded up to
    their bucket) gives what the eager forward pass gives, for full and padded batches; also when
    the captured module is the TorchScript trace (infer.torch's default runtime), fp16."""
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    import torch

    from operators.infer_torch import TorchModel

    model = TorchModel(CENTERFACE, "cuda", 0, True)
    rng = np.random.default_rng(0)
    batches = {n: [rng.random((3, 384, 640), np.float32) for _ in range(n)] for n in (1, 3, 8)}
    eager = {n: model.run(x, model.output_names) for n, x in batches.items()}
    if runtime == "torchscript":
        assert model.trace([3, 384, 640]) <= 1e-3
        traced = {n: model.run(x, model.output_names) for n, x in batches.items()}
        for n, outs in traced.items():
            for name, want in eager[n].items():
                assert np.abs(outs[name] - want).max() < 1e-2, (n, name)
    model.capture_graphs([3, 384, 640], 8)
    assert model.graphs is not None
    assert model.graphs.buckets == [1, 2, 4, 8]
    for n, x in batches.items():
        got = model.run([torch.from_numpy(t).cuda() for t in x], model.output_names)
        for name, want in eager[n].items():
            assert got[name].shape == want.shape
            assert np.abs(got[name] - want).max() < 1e-2, (n, name)
    assert model.graphs.replays == 3
    assert model.graphs.padded_items == 1  # 3 frames went through the graph of 4
