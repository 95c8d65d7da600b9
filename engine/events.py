"""Published events, built from frames and stream controls (schema: schemas/events/v1.json).

Every sink that publishes events (sink.kafka, sink.jsonl in events mode) builds them here, so
they carry the same fields: a unique `event_id` (UUIDv7, time-ordered), `type`,
`schema_version`, `graph`, `stream_id`, the capture time (`capture_ns` and ISO 8601
`capture_time`), `trace_id` (None when the frame is untraced) and the frame's `seq`.

Schema versions: a new optional field bumps the minor version ("1.1"); consumers ignore fields
they do not know. Renaming or removing a field, or changing its type, bumps the major version.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import orjson

from engine.frame import Control, ControlKind, Frame, now_ns
from engine.tracing import trace_id

SCHEMA_VERSION = "1.1"  # 1.1: optional track_session
SummaryPolicy = Literal["every_frame", "with_detections", "never"]
HealthStatus = Literal["connected", "reconnecting", "degraded", "recovered", "ended"]

# Types an operator may raise in frame.events; each has a definition in the JSON Schema.
FRAME_EVENT_TYPES = frozenset(
    {
        "track.start",
        "track.update",
        "track.end",
        "zone.enter",
        "zone.leave",
        "zone.dwell",
        "line.cross",
        "redaction",
    }
)
EVENT_TYPES = FRAME_EVENT_TYPES | {"detections", "stream.health"}

log = logging.getLogger("framegraph.events")
# Seeded from the OS once (reseeded in forked children); per id, os.urandom would be a syscall
# that lets other threads take the GIL, on the hot path.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))
_warned_types: set[str] = set()


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = _random.getrandbits(80)
    rand_a, rand_b = rand >> 68, rand & ((1 << 62) - 1)  # 12 and 62 random bits
    h = f"{(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=64)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_time(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC with microseconds: 2026-11-26T15:04:05.123456Z."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_iso_second(seconds)}.{rest // 1000:06d}Z"


def _envelope(kind: str, graph: str, stream_id: str, capture_ns: int, trace: str | None) -> dict[str, Any]:
    return {
        "event_id": uuid7(),
        "type": kind,
        "schema_version": SCHEMA_VERSION,
        "graph": graph,
        "stream_id": stream_id,
        "capture_ns": capture_ns,
        "capture_time": iso_time(capture_ns),
        "trace_id": trace,
    }


def detection_summary(frame: Frame, graph: str, trace: str | None = None) -> dict[str, Any]:
    """The `detections` event of a frame: what was found (boxes in source pixels) and how sure."""
    det = frame.detections
    items: list[dict[str, Any]] = []
    if det is not None and len(det):
        boxes = det.xyxy.astype(np.float64).round(1).tolist()
        scores = det.score.astype(np.float64).round(4).tolist()
        classes = det.class_id.tolist()
        tracks = det.track_id.tolist() if det.track_id is not None else None
        for i, box in enumerate(boxes):
            entry: dict[str, Any] = {"xyxy": box, "score": scores[i], "class_id": classes[i]}
            if tracks is not None:
                entry["track_id"] = tracks[i]
            items.append(entry)
    degraded = sorted(frame.degraded | ({"detector"} if det is not None and det.degraded else set()))
    return {
        **_envelope("detections", graph, frame.stream_id, frame.capture_ns, trace),
        "seq": frame.seq,
        "pts": frame.pts,
        "width": frame.width,
        "height": frame.height,
        "count": len(items),
        "degraded": degraded,
        "detections": items,
    }


def frame_events(frame: Frame, graph: str, summary: SummaryPolicy = "every_frame") -> list[dict[str, Any]]:
    """A frame's events: its detection summary (per `summary`), then one per `frame.events` item.
    Every one carries the frame's `track_session` when a tracker numbered its track ids."""
    out = _frame_events(frame, graph, summary)
    session = frame.meta.get("track_session")
    if session is not None:
        for event in out:
            event["track_session"] = session
    return out


def _frame_events(frame: Frame, graph: str, summary: SummaryPolicy) -> list[dict[str, Any]]:
    trace = trace_id(frame)
    out: list[dict[str, Any]] = []
    has_detections = frame.detections is not None and len(frame.detections) > 0
    if summary == "every_frame" or (summary == "with_detections" and has_detections):
        out.append(detection_summary(frame, graph, trace))
    for raised in frame.events:
        kind = str(raised.get("type", ""))
        if kind not in FRAME_EVENT_TYPES and kind not in _warned_types:
            _warned_types.add(kind)
            log.warning("event type %r is not in schema %s; published as is", kind, SCHEMA_VERSION)
        fields = {k: plain(v) for k, v in raised.items() if k != "type"}
        envelope = _envelope(kind, graph, frame.stream_id, frame.capture_ns, trace)
        out.append({**fields, **envelope, "seq": frame.seq})
    return out


def health_event(
    stream_id: str, status: HealthStatus, graph: str, reason: str = "", at_ns: int | None = None
) -> dict[str, Any]:
    """A `stream.health` event: the stream connected, is reconnecting, degraded, recovered or ended."""
    return {
        **_envelope("stream.health", graph, stream_id, at_ns if at_ns is not None else now_ns(), None),
        "seq": None,
        "status": status,
        "reason": reason,
    }


_CONTROL_STATUS: dict[ControlKind, HealthStatus] = {
    ControlKind.START: "connected",
    ControlKind.LOST: "reconnecting",  # the source lost its stream (or cannot reach it) and retries
    ControlKind.RESET: "connected",  # the source reconnected: decoders start over
    ControlKind.END: "ended",
}


def control_event(control: Control, graph: str) -> dict[str, Any]:
    """The `stream.health` event of a stream lifecycle control (START, LOST, RESET, END)."""
    return health_event(control.stream_id, _CONTROL_STATUS[control.kind], graph, control.reason)


class DegradationWatch:
    """Raises `stream.health` degraded / recovered when a stream's frames start or stop being degraded."""

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self._degraded: dict[str, bool] = {}

    def check(self, frame: Frame) -> dict[str, Any] | None:
        """The health event this frame causes, if its degradation differs from the previous frame's."""
        det = frame.detections
        now_degraded = bool(frame.degraded) or (det is not None and det.degraded)
        if now_degraded == self._degraded.get(frame.stream_id, False):
            return None
        self._degraded[frame.stream_id] = now_degraded
        reason = ",".join(sorted(frame.degraded)) or ("detector" if now_degraded else "")
        status: HealthStatus = "degraded" if now_degraded else "recovered"
        return health_event(frame.stream_id, status, self.graph, reason, frame.capture_ns)

    def forget(self, stream_id: str) -> None:
        self._degraded.pop(stream_id, None)


def plain(value: Any) -> Any:
    """Numpy scalars and arrays as plain JSON values (a `default` for json.dumps)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def dumps(event: dict[str, Any]) -> bytes:
    """An event as compact UTF-8 JSON (one line): a Kafka message value."""
    return orjson.dumps(event, default=plain, option=orjson.OPT_SERIALIZE_NUMPY)
