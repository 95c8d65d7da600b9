"""`analytics.zones`: polygon zones and directed lines, per stream, over tracked detections.

Each tracked detection (Detections.track_id >= 0) is reduced to an anchor point (the box's
bottom centre, where a person or car touches the ground, or its centre). The operator raises
into `frame.events`:

- `zone.enter` / `zone.leave` when a track's anchor enters or leaves a zone's polygon (a track
  that ends, `track.end` from the tracker, or is not seen for `track_timeout_s`, leaves);
- `zone.dwell` once per visit, when a track has stayed `dwell_s` in a zone;
- `line.cross` when a track's anchor crosses a line a->b: direction `a_to_b` to the right-hand
  side of a walker going from a to b on screen (image y points down), `b_to_a` to the left. A
  side counts once the anchor is `line_hysteresis_px` past the line, so jitter about it does not
  count crossings back and forth.

`frame.meta["zone_counts"]` holds the tracks inside each zone of the frame's stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from engine.frame import Detections, Frame, Item, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import ID_PATTERN, StrictModel

Point = tuple[float, float]


class ZoneSpec(StrictModel):
    """A polygon zone, in source-frame pixels."""

    id: str = Field(pattern=ID_PATTERN)
    stream: str | None = Field(None, description="The stream it applies to; None: every stream.")
    polygon: list[Point] = Field(min_length=3, description="Vertices [[x, y], ...], in order.")


class LineSpec(StrictModel):
    """A directed line a->b (a tripwire), in source-frame pixels."""

    id: str = Field(pattern=ID_PATTERN)
    stream: str | None = Field(None, description="The stream it applies to; None: every stream.")
    a: Point
    b: Point

    @model_validator(mode="after")
    def _two_points(self) -> LineSpec:
        if self.a == self.b:
            raise ValueError("a line needs two distinct points a and b")
        return self


class ZonesConfig(StrictModel):
    """Options of `analytics.zones`."""

    zones: list[ZoneSpec] = Field(default_factory=list)
    lines: list[LineSpec] = Field(default_factory=list)
    dwell_s: float | None = Field(
        None, gt=0, description="Raise zone.dwell after this long in a zone; None: no dwell events."
    )
    anchor: Literal["bottom_center", "center"] = Field(
        "bottom_center",
        description="A box's point: bottom centre (ground contact), or centre.",
    )
    track_timeout_s: float = Field(
        5.0,
        gt=0,
        description="A track unseen this long (and no track.end) is forgotten: it leaves its zones.",
    )
    line_hysteresis_px: float = Field(
        10.0,
        ge=0,
        description="A line is crossed once the anchor is this far past it (pixels): an anchor "
        "jittering about a line crosses it once, not back and forth.",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> ZonesConfig:
        for kind, ids in (("zone", [z.id for z in self.zones]), ("line", [ln.id for ln in self.lines])):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"{kind} id {twice[0]!r} is used twice: events could not tell them apart")
        return self


def points_in_polygon(
    points: npt.NDArray[np.float64], polygon: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Which of `points` (N, 2) lie inside `polygon` (M, 2): even-odd ray casting."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    inside: npt.NDArray[np.bool_] = np.count_nonzero(straddles & (x < x_cross), axis=1) % 2 == 1
    return inside


def side_of(a: Point, b: Point, p: Point) -> float:
    """> 0: p is right of a->b on screen (y down); < 0: left; 0: on the line."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def segments_meet(p: Point, q: Point, a: Point, b: Point) -> bool:
    """Whether segment p-q touches segment a-b (p and q are on opposite sides of a-b, or on it)."""
    d1, d2 = side_of(a, b, p), side_of(a, b, q)
    d3, d4 = side_of(p, q, a), side_of(p, q, b)
    return d1 * d2 <= 0 and d3 * d4 <= 0


@dataclass
class _Track:
    """Where one track has been: the zones it is in (since when), its side of each line."""

    last_seen_ns: int
    zones: dict[str, int] = field(default_factory=dict)  # zone id -> entered at (capture ns)
    dwelled: set[str] = field(default_factory=set)
    sides: dict[str, tuple[float, Point]] = field(default_factory=dict)  # line id -> (sign, point)


@dataclass
class _Stream:
    zones: list[tuple[str, npt.NDArray[np.float64]]]
    lines: list[LineSpec]
    tracks: dict[int, _Track] = field(default_factory=dict)
    blind_since_ns: int | None = None  # the first frame the detector could not see, while it cannot


class ZoneAnalytics(Operator[ZonesConfig]):
    """Raises zone.enter / zone.leave / zone.dwell / line.cross events for tracked detections."""

    consumes, produces = "frames+detections+tracks", "same"
    Config = ZonesConfig

    def __init__(self, config: ZonesConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self._streams: dict[str, _Stream] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        sid = info.stream_id
        zones = [
            (z.id, np.asarray(z.polygon, np.float64)) for z in self.config.zones if z.stream in (None, sid)
        ]
        lines = [ln for ln in self.config.lines if ln.stream in (None, sid)]
        self._streams[sid] = _Stream(zones, lines)

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self._streams.pop(stream_id, None)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame) and (state := self._streams.get(item.stream_id)) is not None:
            item.events.extend(self._update(state, item))
            item.meta["zone_counts"] = {
                zid: sum(zid in t.zones for t in state.tracks.values()) for zid, _ in state.zones
            }
        return (item,)

    def _anchors(self, det: Detections | None) -> tuple[list[int], npt.NDArray[np.float64]]:
        if det is None or det.track_id is None or det.degraded:
            return [], np.zeros((0, 2))
        keep = det.track_id >= 0
        boxes = det.xyxy[keep].astype(np.float64)
        x = (boxes[:, 0] + boxes[:, 2]) / 2
        y = boxes[:, 3] if self.config.anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) / 2
        return det.track_id[keep].tolist(), np.stack([x, y], axis=1)

    def _update(self, state: _Stream, frame: Frame) -> list[dict[str, Any]]:
        now = frame.capture_ns
        det = frame.detections
        ended = {int(e["track_id"]) for e in frame.events if e.get("type") == "track.end"}
        if det is None or det.degraded:  # the detector is blind: nobody left, like the tracker ...
            if state.blind_since_ns is None:
                state.blind_since_ns = now
            return self._leave(state, ended, now)  # ... but a track it ended (stream end) leaves
        if state.blind_since_ns is not None:  # seeing again: the blind time does not count as unseen
            for track in state.tracks.values():
                track.last_seen_ns += now - state.blind_since_ns
            state.blind_since_ns = None
        ids, points = self._anchors(det)
        inside = {zid: points_in_polygon(points, poly) for zid, poly in state.zones} if ids else {}
        events: list[dict[str, Any]] = []
        for i, tid in enumerate(ids):
            track = state.tracks.setdefault(tid, _Track(now))
            track.last_seen_ns = now
            point = (float(points[i, 0]), float(points[i, 1]))
            for zid, _ in state.zones:
                events.extend(self._zone(track, tid, zid, bool(inside[zid][i]), now))
            for line in state.lines:
                events.extend(self._line(track, tid, line, point))
        timeout_ns = int(self.config.track_timeout_s * 1e9)
        gone = {t for t, tr in state.tracks.items() if t in ended or now - tr.last_seen_ns > timeout_ns}
        return events + self._leave(state, gone, now)

    def _leave(self, state: _Stream, tids: set[int], now: int) -> list[dict[str, Any]]:
        """Tracks that ended or vanished leave their zones and are forgotten."""
        events: list[dict[str, Any]] = []
        for tid in sorted(tids & set(state.tracks)):
            for zid in list(state.tracks[tid].zones):
                events.extend(self._zone(state.tracks[tid], tid, zid, False, now))
            del state.tracks[tid]
        return events

    def _zone(self, track: _Track, tid: int, zid: str, inside: bool, now: int) -> list[dict[str, Any]]:
        was_inside = zid in track.zones
        if inside and not was_inside:
            track.zones[zid] = now
            return [self._raise("zone.enter", zone_id=zid, track_id=tid)]
        if not inside and was_inside:
            del track.zones[zid]
            track.dwelled.discard(zid)
            return [self._raise("zone.leave", zone_id=zid, track_id=tid)]
        dwell_s = self.config.dwell_s
        if inside and dwell_s is not None and zid not in track.dwelled:
            stayed_s = (now - track.zones[zid]) / 1e9
            if stayed_s >= dwell_s:
                track.dwelled.add(zid)
                return [self._raise("zone.dwell", zone_id=zid, track_id=tid, dwell_s=round(stayed_s, 3))]
        return []

    def _line(self, track: _Track, tid: int, line: LineSpec, point: Point) -> list[dict[str, Any]]:
        side = side_of(line.a, line.b, point)
        length = float(np.hypot(line.b[0] - line.a[0], line.b[1] - line.a[1]))
        if side == 0 or abs(side) / length < self.config.line_hysteresis_px:
            return []  # on the line, or too near it to say which side: not crossed (yet)
        sign = 1.0 if side > 0 else -1.0
        before = track.sides.get(line.id)
        track.sides[line.id] = (sign, point)
        if before is None or before[0] == sign or not segments_meet(before[1], point, line.a, line.b):
            return []
        direction = "a_to_b" if sign > 0 else "b_to_a"
        return [self._raise("line.cross", line_id=line.id, track_id=tid, direction=direction)]

    def _raise(self, kind: str, **fields: Any) -> dict[str, Any]:
        name = fields.get("zone_id") or fields.get("line_id")
        suffix = f".{fields['direction']}" if kind == "line.cross" else ""
        self.ctx.metrics.events[f"{kind}.{name}{suffix}"] += 1
        return {"type": kind, **fields}
