"""`redact`: each method, padding, shapes, polygons and masks, persistence, fail-closed cover/withhold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.frame import Detections, Frame
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from operators.redact import Redact, RedactConfig
from operators.redaction import pad_boxes

H, W = 120, 160
FILL = (255, 0, 255)


def noise_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (H, W, 3), dtype=np.uint8)


def dets(
    *boxes: tuple[float, float, float, float], track_ids: list[int] | None = None, masks: Any = None
) -> Detections:
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    tid = None if track_ids is None else np.asarray(track_ids, np.int64)
    return Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int64), track_id=tid, masks=masks)


def make(**config: Any) -> Redact:
    return Redact(RedactConfig(**config), OperatorContext("redact", NodeMetrics("redact")))


async def run(
    op: Redact, det: Detections | None, seq: int = 0, image: np.ndarray | None = None
) -> Frame | None:
    frame = Frame("cam0", seq, seq, 0, noise_image() if image is None else image, detections=det)
    out = await op.process(frame)
    assert len(out) <= 1
    return out[0] if out else None  # type: ignore[return-value]


def is_fill(region: np.ndarray) -> bool:
    return bool((region == np.asarray(FILL, np.uint8)).all())


async def test_fill_hides_exactly_the_padded_box_and_leaves_the_rest() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.0)
    src = noise_image()
    out = await run(op, dets((40, 30, 80, 70)), image=src)
    assert out is not None
    assert is_fill(out.image[30:70, 40:80])
    outside = np.ones((H, W), bool)
    outside[30:70, 40:80] = False
    np.testing.assert_array_equal(out.image[outside], src[outside])


async def test_box_scale_and_pad_grow_the_box_about_its_centre() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.5, pad_px=2)
    out = await run(op, dets((40, 40, 80, 60)))
    assert out is not None
    # 40 x 20 box, centre (60, 50): x 1.5 -> 60 x 30, then 2 px a side -> x 28..92, y 33..67
    x0, y0, x1, y1 = pad_boxes(np.asarray([[40, 40, 80, 60]], np.float32), 1.5, 2, W, H)[0]
    assert (x0, y0, x1, y1) == (28, 33, 92, 67)
    assert is_fill(out.image[y0:y1, x0:x1])
    assert not is_fill(out.image[y0 - 1 : y0, x0:x1])
    assert not is_fill(out.image[y0:y1, x1 : x1 + 1])


def test_padding_is_clipped_to_the_frame() -> None:
    out = pad_boxes(np.asarray([[0, 0, 20, 10], [150, 110, 160, 120]], np.float32), 2.0, 5, W, H)
    assert out.tolist() == [[0, 0, 35, 20], [140, 100, 160, 120]]


async def test_blur_changes_the_box_smooths_it_and_keeps_the_rest() -> None:
    op = make(method="blur", box_scale=1.0)
    src = noise_image()
    out = await run(op, dets((40, 30, 100, 90)), image=src)
    assert out is not None
    inside, before = out.image[30:90, 40:100].astype(float), src[30:90, 40:100].astype(float)
    assert np.abs(np.diff(inside, axis=1)).mean() < 0.2 * np.abs(np.diff(before, axis=1)).mean()
    np.testing.assert_array_equal(out.image[:30], src[:30])
    np.testing.assert_array_equal(out.image[:, 100:], src[:, 100:])


async def test_pixelate_makes_constant_blocks() -> None:
    op = make(method="pixelate", box_scale=1.0, pixel_blocks=4)
    out = await run(op, dets((40, 40, 80, 80)))
    assert out is not None
    roi = out.image[40:80, 40:80]
    assert len(np.unique(roi.reshape(-1, 3), axis=0)) <= 16  # 4 x 4 blocks
    block = roi[:10, :10].reshape(-1, 3)
    assert (block == block[0]).all()


async def test_ellipse_shape_leaves_the_box_corners() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.0, shape="ellipse")
    src = noise_image()
    out = await run(op, dets((40, 20, 100, 100)), image=src)
    assert out is not None
    assert is_fill(out.image[55:65, 65:75])  # centre
    np.testing.assert_array_equal(out.image[20:23, 40:43], src[20:23, 40:43])  # corner


async def test_polygons_in_masks_hide_only_the_polygon() -> None:
    op = make(method="fill", fill_color=FILL, pad_px=0)
    triangle = np.asarray([[20, 20], [100, 20], [20, 100]], np.float32)
    masks = np.empty(1, dtype=object)
    masks[0] = triangle
    src = noise_image()
    out = await run(op, dets((20, 20, 100, 100), masks=masks), image=src)
    assert out is not None
    assert is_fill(out.image[25:40, 25:40])  # inside the triangle
    np.testing.assert_array_equal(out.image[85:100, 85:100], src[85:100, 85:100])  # box, not triangle
    assert out.meta["redaction"] == "redacted"


async def test_bitmap_masks_hide_their_pixels() -> None:
    op = make(method="fill", fill_color=FILL)
    mask = np.zeros((1, H, W), bool)
    mask[0, 10:20, 10:30] = True
    out = await run(op, dets((10, 10, 30, 20), masks=mask))
    assert out is not None
    assert is_fill(out.image[10:20, 10:30])
    assert not is_fill(out.image[20:22, 10:30])


async def test_a_missed_track_stays_hidden_for_persist_frames_at_its_predicted_place() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.0, persist_frames=3, predict=True)
    # track 7 moves 10 px right per frame over frames 0..2, then the detector misses it
    for seq in range(3):
        out = await run(op, dets((10 + 10 * seq, 40, 40 + 10 * seq, 70), track_ids=[7]), seq)
        assert out is not None
        assert out.meta["redaction"] == "redacted"
    for seq in (3, 4, 5):
        out = await run(op, dets(track_ids=[]), seq)
        assert out is not None
        assert out.meta["redaction"] == "redacted"
        assert is_fill(out.image[40:70, 30:60])  # the last seen box
        x = 10 + 10 * seq  # where its motion leads
        assert is_fill(out.image[40:70, x : x + 30])
    out = await run(op, dets(track_ids=[]), 6)
    assert out is not None
    assert out.meta["redaction"] == "clean"
    assert not is_fill(out.image[40:70, 30:60])


async def test_persist_zero_hides_only_current_detections() -> None:
    op = make(method="fill", fill_color=FILL, persist_frames=0)
    await run(op, dets((10, 10, 40, 40), track_ids=[1]), 0)
    out = await run(op, dets(track_ids=[]), 1)
    assert out is not None
    assert out.meta["redaction"] == "clean"


async def test_untracked_boxes_persist_until_something_is_detected_there() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.0, persist_frames=5)
    await run(op, dets((10, 10, 40, 40), track_ids=[-1]), 0)
    out = await run(op, dets(), 1)
    assert out is not None
    assert is_fill(out.image[10:40, 10:40])
    # detected again (a little further): the old box is no longer needed
    await run(op, dets((14, 10, 44, 40), track_ids=[-1]), 2)
    out = await run(op, dets((18, 10, 48, 40), track_ids=[-1]), 3)
    assert out is not None
    assert not is_fill(out.image[10:40, 10:13])


@pytest.mark.parametrize(
    "det",
    [None, Detections.unavailable()],
    ids=["no-detections", "degraded-detections"],
)
async def test_unavailable_detections_cover_the_whole_frame(det: Detections | None) -> None:
    op = make(method="blur", fill_color=FILL)
    out = await run(op, det)
    assert out is not None
    assert is_fill(out.image)
    assert out.meta["redaction"] == "covered"
    why = "no detections" if det is None else "detections unavailable"
    assert out.events[-1] == {"type": "redaction", "treatment": "covered", "regions": 1, "reason": why}
    assert op.ctx.metrics.events["redaction_covered"] == 1


async def test_frame_marked_inference_unavailable_is_covered_even_with_boxes() -> None:
    op = make(fill_color=FILL)
    frame = Frame("cam0", 0, 0, 0, noise_image(), detections=dets())
    frame.degraded.add("inference_unavailable")
    (out,) = await op.process(frame)
    assert isinstance(out, Frame)
    assert is_fill(out.image)


async def test_withhold_passes_on_a_covered_frame_marked_withheld_with_its_audit_event() -> None:
    """A withheld frame is never written (video sinks refuse it), but its audit event must reach
    the event sinks: it goes on covered, marked withheld."""
    op = make(on_unavailable="withhold", fill_color=FILL)
    frame = Frame("cam0", 0, 0, 0, noise_image(), detections=dets())
    frame.degraded.add("inference_unavailable")
    for out in [await run(op, None, 0), *(await op.process(frame))]:
        assert isinstance(out, Frame)
        assert out.meta["redaction"] == "withheld"
        assert is_fill(out.image)  # no pixel of the original goes on
        assert out.events[-1]["treatment"] == "withheld"
        assert out.events[-1]["regions"] == 0
    assert out.events[-1]["reason"] == "inference_unavailable"
    clean = await run(op, dets(), 2)
    assert clean is not None
    assert clean.meta["redaction"] == "clean"
    m = op.ctx.metrics
    assert (m.events["redaction_withheld"], m.events["redaction_clean"]) == (2, 1)
    assert not m.dropped  # the video sink drops it, not redact


async def test_never_modifies_the_input_frame_or_its_image() -> None:
    op = make(method="fill", fill_color=FILL)
    src = noise_image()
    frame = Frame("cam0", 0, 0, 0, src, detections=dets((10, 10, 50, 50)))
    frame.meta["k"] = 1
    (out,) = await op.process(frame)
    assert isinstance(out, Frame)
    assert out is not frame
    assert out.image is not src
    np.testing.assert_array_equal(frame.image, noise_image())
    assert frame.meta == {"k": 1}
    assert frame.events == []
    assert out.meta == {"k": 1, "redaction": "redacted"}


async def test_counts_meta_and_events_per_treatment() -> None:
    op = make(persist_frames=0)
    outs = [await run(op, dets((10, 10, 40, 40), (60, 60, 90, 90)), 0), await run(op, dets(), 1)]
    outs.append(await run(op, None, 2))
    treatments = [f.meta["redaction"] for f in outs if f is not None]
    assert treatments == ["redacted", "clean", "covered"]
    assert [f.events[-1]["regions"] for f in outs if f is not None] == [2, 0, 1]
    ev = op.ctx.metrics.events
    assert (ev["redaction_redacted"], ev["redaction_clean"], ev["redaction_covered"]) == (1, 1, 1)


async def test_classes_limit_what_is_hidden() -> None:
    op = make(method="fill", fill_color=FILL, box_scale=1.0, classes=[1])
    det = dets((10, 10, 40, 40), (60, 60, 90, 90))
    det.class_id[:] = [0, 1]
    out = await run(op, det)
    assert out is not None
    assert not is_fill(out.image[10:40, 10:40])
    assert is_fill(out.image[60:90, 60:90])
