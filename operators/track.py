"""`track.bytetrack`: multi-object tracking per stream (Roboflow `trackers`' ByteTrack).

Each stream gets its own tracker, made on stream start and released on stream end. Every
detection is kept (an untracked one has track id -1); confirmed tracks get stable ids, and
their lifecycle is raised into `frame.events`: `track.start` when an id first appears,
`track.end` when the tracker drops it (lost for `lost_track_buffer` frames) or the stream ends.
So that the stream's last frame can carry the final `track.end` events, one frame per stream is
held back (`hold_last_frame`; off: no added latency, tracks open at the end are only counted).

Track ids count from 0 per tracker, and a stream gets a new tracker whenever it starts again (a
worker took it over after a failover, the job was restarted). So each tracker has a session id
(UUIDv7), put in `frame.meta["track_session"]` and from there into every event of the frame:
(stream_id, track_session, track_id) names one track for good. A reconnect keeps the tracker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from engine.events import uuid7
from engine.frame import Detections, Frame, Item, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel


class ByteTrackConfig(StrictModel):
    """Options of `track.bytetrack` (see trackers.ByteTrackTracker)."""

    lost_track_buffer: int = Field(30, ge=0, description="Frames (at 30 fps) a lost track is kept.")
    track_activation_threshold: float = Field(
        0.5, ge=0, le=1, description="Score a detection needs to start a track."
    )
    high_conf_det_threshold: float = Field(
        0.5, ge=0, le=1, description="Scores below this only extend existing tracks (ByteTrack's 2nd stage)."
    )
    minimum_iou_threshold: float = Field(0.1, ge=0, le=1, description="IoU a detection needs to match.")
    minimum_consecutive_frames: int = Field(2, ge=1, description="Matches before a track gets an id.")
    frame_rate: float = Field(0.0, ge=0, description="0: the stream's own frame rate (30 if unknown).")
    hold_last_frame: bool = Field(
        True, description="Delay frames by one, so the last frame carries the stream-end track.end events."
    )


@dataclass
class _StreamTracks:
    """One stream's tracker and the tracks it has announced (id -> class, last box)."""

    tracker: Any
    open: dict[int, tuple[int, list[float]]] = field(default_factory=dict)
    held: Frame | None = None
    session: str = field(default_factory=uuid7)  # which tracker numbered the ids


def _event(kind: str, track_id: int, class_id: int, xyxy: list[float]) -> dict[str, Any]:
    return {"type": kind, "track_id": track_id, "class_id": class_id, "xyxy": xyxy}


class ByteTrack(Operator[ByteTrackConfig]):
    """Sets `Detections.track_id` (-1: not yet confirmed) and raises track.start / track.end."""

    consumes, produces = "frames+detections", "+tracks"
    Config = ByteTrackConfig

    def __init__(self, config: ByteTrackConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.streams: dict[str, _StreamTracks] = {}

    def _new_tracker(self, fps: float) -> Any:
        from trackers import ByteTrackTracker

        cfg = self.config
        return ByteTrackTracker(
            lost_track_buffer=cfg.lost_track_buffer,
            frame_rate=cfg.frame_rate or fps or 30.0,
            track_activation_threshold=cfg.track_activation_threshold,
            minimum_consecutive_frames=cfg.minimum_consecutive_frames,
            minimum_iou_threshold=cfg.minimum_iou_threshold,
            high_conf_det_threshold=cfg.high_conf_det_threshold,
        )

    async def on_stream_start(self, info: StreamInfo) -> None:
        self.streams[info.stream_id] = _StreamTracks(self._new_tracker(info.fps))

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        """Release the stream's tracker: every open track ends, on the held last frame."""
        state = self.streams.pop(stream_id, None)
        if state is None:
            return ()
        self.ctx.metrics.events["tracks_ended"] += len(state.open)
        if state.held is None:
            return ()
        ends = [_event("track.end", tid, cls, box) for tid, (cls, box) in sorted(state.open.items())]
        state.held.events.extend(ends)
        return (state.held,)

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"track.bytetrack takes frames, got {type(item).__name__}")
        state = self.streams.get(item.stream_id)
        if state is None:
            state = self.streams[item.stream_id] = _StreamTracks(self._new_tracker(0.0))
        item.meta["track_session"] = state.session
        det = item.detections
        if det is not None and not det.degraded:  # else the detector did not run: tracks age not
            ids = self._update(state, det)
            item.detections = Detections(
                det.xyxy, det.score, det.class_id, ids, det.landmarks, det.masks, det.degraded
            )
            item.events.extend(self._lifecycle(state, item.detections))
        if not self.config.hold_last_frame:
            return (item,)
        held, state.held = state.held, item
        return () if held is None else (held,)

    def _update(self, state: _StreamTracks, det: Detections) -> np.ndarray:
        """Track ids aligned with `det` (-1 where the tracker has not confirmed a track)."""
        import supervision as sv

        n = len(det)
        sv_det = sv.Detections(
            xyxy=det.xyxy.astype(np.float32).reshape(-1, 4),
            confidence=det.score.astype(np.float32),
            class_id=det.class_id.astype(int),
            data={"index": np.arange(n)},
        )
        out = state.tracker.update(sv_det)
        ids = np.full(n, -1, np.int64)
        if len(out):
            ids[np.asarray(out.data["index"], np.int64)] = np.asarray(out.tracker_id, np.int64)
        return ids

    def _lifecycle(self, state: _StreamTracks, det: Detections) -> list[dict[str, Any]]:
        assert det.track_id is not None
        events: list[dict[str, Any]] = []
        for i, tid in enumerate(det.track_id.tolist()):
            if tid < 0:
                continue
            box = [round(float(v), 1) for v in det.xyxy[i]]
            if tid not in state.open:
                events.append(_event("track.start", tid, int(det.class_id[i]), box))
                self.ctx.metrics.events["tracks_started"] += 1
            state.open[tid] = (int(det.class_id[i]), box)
        alive = {int(t.tracker_id) for t in state.tracker.tracks if t.tracker_id != -1}
        for tid in sorted(set(state.open) - alive):
            cls, box = state.open.pop(tid)
            events.append(_event("track.end", tid, cls, box))
            self.ctx.metrics.events["tracks_ended"] += 1
        return events
