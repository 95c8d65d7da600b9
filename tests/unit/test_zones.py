"""analytics.zones: synthetic tracks through a polygon and across a line give exactly the expected events."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from engine.frame import Detections, Frame, StreamInfo
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from operators.analytics import ZoneAnalytics, ZonesConfig, points_in_polygon

FPS = 10
CONFIG: dict[str, Any] = {
    "zones": [
        {"id": "square", "polygon": [[100, 100], [200, 100], [200, 200], [100, 200]]},
        {"id": "elsewhere", "stream": "cam9", "polygon": [[0, 0], [10, 0], [10, 10]]},
    ],
    "lines": [{"id": "gate", "a": [0, 300], "b": [400, 300]}],  # walking a->b (east): right is south
    "dwell_s": 0.5,
}


def box_at(x: float, y: float) -> list[float]:
    """A 20x40 box whose bottom centre is (x, y)."""
    return [x - 10, y - 40, x + 10, y]


def frame(
    seq: int, tracks: dict[int, tuple[float, float]], events: list[dict[str, Any]] | None = None
) -> Frame:
    ids = list(tracks)
    det = Detections(
        np.array([box_at(*tracks[t]) for t in ids], np.float32).reshape(-1, 4),
        np.full(len(ids), 0.9, np.float32),
        np.zeros(len(ids), np.int64),
        track_id=np.array(ids, np.int64),
    )
    return Frame(
        "cam0",
        seq,
        seq,
        seq * 1_000_000_000 // FPS,
        np.zeros((480, 640, 3), np.uint8),
        detections=det,
        events=events or [],
    )


async def run(op: ZoneAnalytics, frames: list[Frame]) -> list[tuple[int, dict[str, Any]]]:
    await op.on_stream_start(StreamInfo("cam0", width=640, height=480))
    out = []
    for f in frames:
        (done,) = await op.process(f)
        assert isinstance(done, Frame)
        out += [(done.seq, e) for e in done.events if e["type"].startswith(("zone.", "line."))]
    return out


def make_op(**overrides: Any) -> ZoneAnalytics:
    return ZoneAnalytics(
        ZonesConfig(**{**CONFIG, **overrides}), OperatorContext("zones", NodeMetrics("zones"))
    )


async def test_tracks_through_a_zone_and_across_a_line_raise_exactly_the_expected_events() -> None:
    # track 1 walks south down x=150: enters the square at y=100, leaves after y=200, crosses the line at y=300
    # track 2 walks north along x=50, outside the square, and crosses the line the other way
    # track 3 stays still inside the square long enough to dwell; track -1 (untracked) is ignored
    frames = []
    for i in range(12):
        y1, y2 = 50 + i * 30, 400 - i * 30
        frames.append(frame(i, {1: (150, y1), 2: (50, y2), 3: (120, 150), -1: (150, 150)}))
    op = make_op()
    got = await run(op, frames)
    assert got == [
        (0, {"type": "zone.enter", "zone_id": "square", "track_id": 3}),
        (2, {"type": "zone.enter", "zone_id": "square", "track_id": 1}),  # y=110
        (4, {"type": "line.cross", "line_id": "gate", "track_id": 2, "direction": "b_to_a"}),  # y 310 -> 280
        (5, {"type": "zone.leave", "zone_id": "square", "track_id": 1}),  # y=200: on the edge is outside
        (5, {"type": "zone.dwell", "zone_id": "square", "track_id": 3, "dwell_s": 0.5}),  # once per visit
        (9, {"type": "line.cross", "line_id": "gate", "track_id": 1, "direction": "a_to_b"}),  # y 290 -> 320
    ]
    assert frames[-1].meta["zone_counts"] == {"square": 1}
    assert frames[3].meta["zone_counts"] == {"square": 2}
    assert op.ctx.metrics.events == {
        "zone.enter.square": 2,
        "zone.leave.square": 1,
        "zone.dwell.square": 1,
        "line.cross.gate.a_to_b": 1,
        "line.cross.gate.b_to_a": 1,
    }


async def test_ended_or_vanished_tracks_leave_their_zones_and_state_is_per_stream() -> None:
    op = make_op(track_timeout_s=0.25)
    ended = [{"type": "track.end", "track_id": 1}]
    got = await run(
        op,
        [
            frame(0, {1: (150, 150), 2: (160, 160)}),
            frame(1, {2: (160, 160)}, events=ended),  # the tracker ended 1: it leaves at once
            frame(2, {}),
            frame(3, {}),
            frame(4, {}),  # 2 unseen for 0.3 s > 0.25 s: forgotten, it leaves
            frame(5, {2: (160, 160)}),  # seen again: a new visit (no dwell: it starts over)
        ],
    )
    assert [(s, e["type"], e["track_id"]) for s, e in got] == [
        (0, "zone.enter", 1),
        (0, "zone.enter", 2),
        (1, "zone.leave", 1),
        (4, "zone.leave", 2),
        (5, "zone.enter", 2),
    ]
    assert op._streams["cam0"].tracks.keys() == {2}
    await op.on_stream_end("cam0")
    assert op._streams == {}


async def test_a_track_passing_beside_the_end_of_a_line_does_not_cross_it() -> None:
    op = make_op(zones=[], lines=[{"id": "short", "a": [100, 300], "b": [200, 300]}])
    # south beside b (x=300), then north-west past b again (meets y=300 at x=225), then south through it
    path = [(300, 250), (300, 350), (150, 250), (150, 350)]
    got = await run(op, [frame(i, {1: p}) for i, p in enumerate(path)])
    assert got == [(3, {"type": "line.cross", "line_id": "short", "track_id": 1, "direction": "a_to_b"})]


def test_points_in_a_concave_polygon() -> None:
    u_shape = np.array(
        [[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], np.float64
    )
    points = np.array([[5, 20], [15, 20], [25, 20], [15, 5], [40, 5]], np.float64)
    assert points_in_polygon(points, u_shape).tolist() == [True, False, True, True, False]


def test_config_rejects_degenerate_shapes() -> None:
    with pytest.raises(ValidationError, match="two distinct points"):
        ZonesConfig(lines=[{"id": "l", "a": [1, 1], "b": [1, 1]}])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        ZonesConfig(zones=[{"id": "z", "polygon": [[0, 0], [1, 1]]}])  # type: ignore[list-item]


async def test_an_anchor_jittering_about_a_line_crosses_it_once() -> None:
    """A face moving sideways along y=300 with a few pixels of jitter is no people counter's crowd."""
    op = make_op(zones=[])
    ys = [280, 296, 305, 297, 304, 298, 303, 296, 305, 330, 304, 297]
    got = await run(op, [frame(i, {1: (50 + 10 * i, y)}) for i, y in enumerate(ys)])
    assert got == [(9, {"type": "line.cross", "line_id": "gate", "track_id": 1, "direction": "a_to_b"})]
    strict = make_op(zones=[], line_hysteresis_px=0)  # what it was: every jitter a crossing
    assert len(await run(strict, [frame(i, {1: (50 + 10 * i, y)}) for i, y in enumerate(ys)])) == 8


def test_zone_and_line_ids_must_be_unique() -> None:
    twice = [{"id": "left", "polygon": [[0, 0], [10, 0], [10, 10]]}] * 2
    with pytest.raises(ValidationError, match="zone id 'left' is used twice"):
        ZonesConfig(zones=twice)
    with pytest.raises(ValidationError, match="line id 'gate' is used twice"):
        ZonesConfig(lines=[{"id": "gate", "a": [0, 0], "b": [1, 1]}] * 2)


async def test_a_blind_detector_does_not_make_tracks_leave_their_zones() -> None:
    """Triton away for longer than track_timeout_s: the tracker keeps its tracks, so zones must
    not count a leave and a second visit for the same person."""
    op = make_op(track_timeout_s=0.25)
    blind = [
        Frame("cam0", s, s, s * 1_000_000_000 // FPS, np.zeros((480, 640, 3), np.uint8),
              detections=Detections.unavailable())
        for s in range(1, 9)
    ]  # fmt: skip
    got = await run(op, [frame(0, {1: (150, 150)}), *blind, frame(9, {1: (150, 150)})])
    # one visit: no leave while blind, no second enter; it stayed 0.9 s, so it dwelled (0.5 s)
    assert [(s, e["type"]) for s, e in got] == [(0, "zone.enter"), (9, "zone.dwell")]
    assert op._streams["cam0"].tracks.keys() == {1}


async def test_a_track_ended_on_a_blind_frame_still_leaves_its_zone() -> None:
    """At a stream's end the tracker puts track.end on its held last frame, which may be blind."""
    op = make_op()
    last = Frame(
        "cam0", 1, 1, 100_000_000, np.zeros((480, 640, 3), np.uint8),
        detections=Detections.unavailable(), events=[{"type": "track.end", "track_id": 1}],
    )  # fmt: skip
    got = await run(op, [frame(0, {1: (150, 150)}), last])
    assert [(s, e["type"]) for s, e in got] == [(0, "zone.enter"), (1, "zone.leave")]
