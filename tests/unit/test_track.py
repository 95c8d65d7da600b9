"""`track.bytetrack` on synthetic sequences with known trajectories: MOTA/IDF1 (motmetrics), events.

`pytest -s` prints the metrics table. The thresholds are the measured figures less a small margin
(the sequences are seeded, so the figures are exact; a drop means the tracker or its use changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from engine.frame import Detections, Frame, StreamInfo
from engine.golden import iou_matrix
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from operators.track import ByteTrack, ByteTrackConfig


@dataclass
class Sequence_:
    """Ground truth (id -> box per frame) and the detector's view of it, per frame."""

    gt: list[dict[int, np.ndarray]]
    dets: list[Detections]


def linear_objects(
    rng: np.random.Generator, frames: int, starts: list[tuple[float, float, float, float]]
) -> list[dict[int, np.ndarray]]:
    """Objects (x, y, vx, vy), 50 x 60 px boxes, moving in straight lines."""
    return [
        {
            oid: np.asarray([x + vx * f, y + vy * f, x + vx * f + 50, y + vy * f + 60], np.float32)
            for oid, (x, y, vx, vy) in enumerate(starts)
        }
        for f in range(frames)
    ]


def detect(
    rng: np.random.Generator,
    gt: list[dict[int, np.ndarray]],
    miss: float,
    gaps: dict[int, range] | None = None,
    jitter: float = 1.5,
) -> list[Detections]:
    """Noisy detections: boxes jittered, missed at random (`miss`) and over `gaps` (id -> frames)."""
    out = []
    for f, objects in enumerate(gt):
        boxes, scores = [], []
        for oid, box in objects.items():
            if rng.random() < miss or (gaps and f in gaps.get(oid, range(0))):
                continue
            boxes.append(box + rng.normal(0, jitter, 4).astype(np.float32))
            scores.append(rng.uniform(0.35, 0.95))  # some below the high-confidence split: 2nd stage
        n = len(boxes)
        out.append(
            Detections(
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(scores, np.float32),
                np.zeros(n, np.int64),
            )
        )
    return out


def scenarios() -> dict[str, Sequence_]:
    rng = np.random.default_rng(0)
    out = {}
    gt = linear_objects(rng, 90, [(20, 100, 6, 0), (560, 110, -6, 0)])  # head-on crossing
    out["crossing"] = Sequence_(gt, detect(rng, gt, miss=0.0))
    gt = linear_objects(rng, 90, [(20, 40, 4, 2), (400, 40, -3, 3), (200, 300, 2, -2), (500, 350, -4, -1)])
    out["missed_20pct"] = Sequence_(gt, detect(rng, gt, miss=0.2))
    gt = linear_objects(rng, 90, [(20, 100, 5, 0), (480, 100, -5, 0), (250, 20, 0, 3)])
    out["crossing_with_gaps"] = Sequence_(gt, detect(rng, gt, 0.05, {0: range(40, 46), 2: range(20, 28)}))
    return out


async def run_tracker(dets: list[Detections], **config: Any) -> tuple[list[Frame], ByteTrack]:
    op = ByteTrack(ByteTrackConfig(hold_last_frame=False, **config), OperatorContext("t", NodeMetrics("t")))
    await op.on_stream_start(StreamInfo("cam0", fps=30.0))
    frames = []
    for f, d in enumerate(dets):
        (out,) = await op.process(Frame("cam0", f, f, 0, np.zeros((4, 4, 3), np.uint8), detections=d))
        assert isinstance(out, Frame)
        frames.append(out)
    return frames, op


def mot_metrics(seq: Sequence_, frames: list[Frame]) -> dict[str, float]:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for truth, frame in zip(seq.gt, frames, strict=True):
        det = frame.detections
        assert det is not None
        assert det.track_id is not None
        tracked = det.track_id >= 0
        hyp_ids, hyp = det.track_id[tracked].tolist(), det.xyxy[tracked]
        gt_ids = list(truth)
        gt_boxes = np.asarray([truth[i] for i in gt_ids], np.float32).reshape(-1, 4)
        dist = 1.0 - iou_matrix(gt_boxes, hyp)
        dist[dist > 0.5] = np.nan  # a match needs IoU >= 0.5
        acc.update(gt_ids, hyp_ids, dist)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name="s")
    return {k: float(summary.loc["s", k]) for k in ("mota", "idf1", "num_switches")}


# Measured with trackers 2.6.1 (ByteTrack, config defaults of track.bytetrack), seed 0. MOTA's
# ceiling is 1 - miss rate (a missed detection is a false negative); the first sighting of each
# object is one more (ids are given on the second match).
EXPECTED = {
    "crossing": {"mota": 0.983, "idf1": 0.992},
    "missed_20pct": {"mota": 0.733, "idf1": 0.846},
    "crossing_with_gaps": {"mota": 0.881, "idf1": 0.937},
}
MARGIN = 0.02


@pytest.mark.parametrize("name", list(EXPECTED))
async def test_mota_and_idf1_on_synthetic_sequences(name: str) -> None:
    seq = scenarios()[name]
    frames, _ = await run_tracker(seq.dets)
    m = mot_metrics(seq, frames)
    print(f"\n{name:<20} MOTA {m['mota']:.3f} IDF1 {m['idf1']:.3f} ID switches {m['num_switches']:.0f}")
    assert m["mota"] >= EXPECTED[name]["mota"] - MARGIN, m
    assert m["idf1"] >= EXPECTED[name]["idf1"] - MARGIN, m
    assert m["num_switches"] == 0, m


async def test_every_detection_is_kept_and_aligned() -> None:
    seq = scenarios()["missed_20pct"]
    frames, _ = await run_tracker(seq.dets)
    for given, frame in zip(seq.dets, frames, strict=True):
        assert frame.detections is not None
        np.testing.assert_array_equal(frame.detections.xyxy, given.xyxy)
        np.testing.assert_array_equal(frame.detections.score, given.score)
        assert frame.detections.track_id is not None
        assert len(frame.detections.track_id) == len(given)


async def test_lifecycle_events_start_once_end_when_lost_and_at_stream_end() -> None:
    rng = np.random.default_rng(1)
    gt = linear_objects(rng, 60, [(20, 100, 3, 0), (300, 100, 0, 2)])
    for f in range(20, 60):
        del gt[f][0]  # object 0 leaves at frame 20
    dets = detect(rng, gt, miss=0.0, jitter=0.5)
    op = ByteTrack(ByteTrackConfig(lost_track_buffer=10), OperatorContext("t", NodeMetrics("t")))
    await op.on_stream_start(StreamInfo("cam0", fps=30.0))
    frames: list[Any] = []
    for f, d in enumerate(dets):
        frames += await op.process(Frame("cam0", f, f, 0, np.zeros((4, 4, 3), np.uint8), detections=d))
    assert len(frames) == 59  # one held back, for the stream-end events
    frames += await op.on_stream_end("cam0")
    assert [f.seq for f in frames] == list(range(60))
    events = [(f.seq, e) for f in frames for e in f.events]
    starts = [(s, e["track_id"]) for s, e in events if e["type"] == "track.start"]
    ends = [(s, e["track_id"]) for s, e in events if e["type"] == "track.end"]
    assert [s for s, _ in starts] == [1, 1]  # confirmed on the second match
    lost_id = next(e["track_id"] for _, e in events if e["type"] == "track.start" and e["xyxy"][0] < 100)
    assert ends[0] == (30, lost_id)  # 10 frames after its last sighting (frame 19) plus the prune
    assert ends[1][0] == 59  # the other ends with the stream, on its last frame
    assert {e["track_id"] for _, e in events} == {t for _, t in starts}
    sample = next(e for _, e in events if e["type"] == "track.end")
    assert set(sample) == {"type", "track_id", "class_id", "xyxy"}
    assert len(sample["xyxy"]) == 4
    assert op.streams == {}  # state released with the stream
    assert op.ctx.metrics.events["tracks_started"] == op.ctx.metrics.events["tracks_ended"] == 2


async def test_streams_have_their_own_trackers_and_ids() -> None:
    seq = scenarios()["crossing"]
    op = ByteTrack(ByteTrackConfig(hold_last_frame=False), OperatorContext("t", NodeMetrics("t")))
    await op.on_stream_start(StreamInfo("a", fps=30.0))
    await op.on_stream_start(StreamInfo("b", fps=30.0))
    ids: dict[str, set[int]] = {"a": set(), "b": set()}
    for f, d in enumerate(seq.dets):
        for sid in ("a", "b"):
            (out,) = await op.process(Frame(sid, f, f, 0, np.zeros((4, 4, 3), np.uint8), detections=d))
            assert isinstance(out, Frame)
            assert out.detections is not None
            assert out.detections.track_id is not None
            ids[sid] |= {int(t) for t in out.detections.track_id if t >= 0}
    assert ids["a"] == ids["b"]  # same input, same ids: no shared counter between streams
    await op.on_stream_end("a")
    assert set(op.streams) == {"b"}


async def test_degraded_frames_pass_untouched_and_do_not_age_tracks() -> None:
    op = ByteTrack(ByteTrackConfig(hold_last_frame=False), OperatorContext("t", NodeMetrics("t")))
    await op.on_stream_start(StreamInfo("cam0"))
    frame = Frame("cam0", 0, 0, 0, np.zeros((4, 4, 3), np.uint8), detections=Detections.unavailable())
    (out,) = await op.process(frame)
    assert out is frame
    assert frame.detections is not None
    assert frame.detections.degraded
    assert frame.events == []
