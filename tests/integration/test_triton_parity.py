"""Parity: boxes through Triton equal boxes from the same ONNX run directly with onnxruntime,
for the onnxruntime model (centerface) and the TorchScript one made from it (centerface_torch,
the model a GPU machine serves)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from engine.frame import Frame
from engine.golden import golden_frames, iou_matrix, perturb
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from operators.infer import TritonConfig, TritonInfer
from operators.postprocess import CenterFaceConfig, CenterFacePostprocess
from operators.preprocess import PreprocessConfig, preprocess_image

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["537", "538", "539", "540"]


def frames_for_parity() -> list[Frame]:
    images = [img for img, _ in golden_frames(seed=3, n=6)]
    images += [
        perturb(img, kind)
        for img, kind in zip(images[:4], ["low_light", "blur", "noise", "jpeg"], strict=True)
    ]
    cfg = PreprocessConfig(width=640, height=384)
    frames = []
    for i, image in enumerate(images):
        f = Frame(f"s{i % 3}", i, i, 0, image)
        f.tensor, f.letterbox = preprocess_image(image, "rgb24", cfg)
        frames.append(f)
    return frames


async def postprocess(frames: list[Frame]) -> list[Any]:
    op = CenterFacePostprocess(CenterFaceConfig(threshold=0.3), OperatorContext("post", NodeMetrics("post")))
    for f in frames:
        await op.process(f)
    return [f.detections for f in frames]


@pytest.mark.parametrize("model", ["centerface", "centerface_torch"])
@pytest.mark.parametrize("shared_memory", ["system", "off"])
async def test_triton_boxes_equal_onnxruntime_boxes(triton_url: str, shared_memory: str, model: str) -> None:
    if model == "centerface_torch" and os.environ.get("FG_TORCH") == "0":
        pytest.skip("FG_TORCH=0: the Triton server has no torch, centerface_torch is not served")
    via_triton = frames_for_parity()
    infer = TritonInfer(
        TritonConfig(url=triton_url, model=model, shared_memory=shared_memory),  # type: ignore[arg-type]
        OperatorContext("detect", NodeMetrics("detect")),
    )
    await infer.setup()
    try:
        await infer.process_batch(list(via_triton))  # one call: batches split at max_batch_size
    finally:
        await infer.teardown()
    direct = frames_for_parity()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the exporter's initializer-as-input warnings, once per weight
    session = ort.InferenceSession(
        str(ROOT / "triton_models/centerface/1/centerface.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for f in direct:
        outs = session.run(OUTPUTS, {"input.1": f.tensor[None]})
        f.outputs = {n: o[0] for n, o in zip(OUTPUTS, outs, strict=True)}
    got, want = await postprocess(via_triton), await postprocess(direct)
    total = 0
    for a, b in zip(got, want, strict=True):
        assert not a.degraded
        assert len(a) == len(b)
        if len(a):
            ious = iou_matrix(a.xyxy, b.xyxy)
            assert np.all(ious.max(axis=1) >= 0.99)
            total += len(a)
    assert total >= 10  # the frames really had faces
