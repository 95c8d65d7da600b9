"""Events: every type built by engine/events.py validates against the published JSON Schema."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    DegradationWatch,
    control_event,
    dumps,
    frame_events,
    iso_time,
)
from engine.frame import Control, ControlKind, Detections, Frame, StreamInfo
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from engine.spec import TracingSpec
from engine.tracing import FrameTracer
from operators.sinks import JsonlConfig, JsonlSink

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas/events/v1.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def tracked_frame(seq: int = 7, **kw: Any) -> Frame:
    det = Detections(
        np.array([[10.04, 20, 50, 80], [100, 100, 140, 170]], np.float32),
        np.array([0.93, 0.41], np.float32),
        np.array([0, 0], np.int64),
        track_id=np.array([3, -1], np.int64),
    )
    return Frame(
        "cam0",
        seq,
        seq * 3000,
        1_795_000_000_123_456_789,
        np.zeros((360, 640, 3), np.uint8),
        detections=det,
        **kw,
    )


RAISED: list[dict[str, Any]] = [
    {"type": "track.start", "track_id": 3, "class_id": 0, "xyxy": [10.0, 20.0, 50.0, 80.0]},
    {"type": "track.update", "track_id": np.int64(3), "xyxy": np.array([11.0, 21.0, 51.0, 81.0])},
    {"type": "track.end", "track_id": 3, "class_id": 0, "xyxy": [12.0, 22.0, 52.0, 82.0]},
    {"type": "zone.enter", "zone_id": "door", "track_id": 3},
    {"type": "zone.dwell", "zone_id": "door", "track_id": 3, "dwell_s": 2.5},
    {"type": "zone.leave", "zone_id": "door", "track_id": 3},
    {"type": "line.cross", "line_id": "gate", "track_id": 3, "direction": "a_to_b"},
    {"type": "redaction", "treatment": "redacted", "regions": 1},
]


def all_events() -> list[dict[str, Any]]:
    frame = tracked_frame(events=[dict(e) for e in RAISED])
    events = frame_events(frame, "g")
    info = StreamInfo("cam0", width=640, height=360)
    events += [control_event(Control(kind, "cam0", info, "why"), "g") for kind in ControlKind]
    watch = DegradationWatch("g")
    events.append(watch.check(tracked_frame(8, degraded={"detector_timeout"})))  # type: ignore[arg-type]
    events.append(watch.check(tracked_frame(9)))  # type: ignore[arg-type]
    return events


def test_every_event_type_validates_against_the_published_schema(
    validator: jsonschema.Draft202012Validator,
) -> None:
    events = all_events()
    assert {e["type"] for e in events} == EVENT_TYPES
    for event in events:
        plain = json.loads(dumps(event))  # what a consumer receives
        errors = [e.message for e in validator.iter_errors(plain)]
        assert not errors, f"{event['type']}: {errors}"
    statuses = {e["status"] for e in events if e["type"] == "stream.health"}
    assert statuses == {"connected", "reconnecting", "degraded", "recovered", "ended"}


def test_the_schema_rejects_what_consumers_must_not_see(validator: jsonschema.Draft202012Validator) -> None:
    by_type = {e["type"]: json.loads(dumps(e)) for e in all_events()}
    summary, enter, cross = by_type["detections"], by_type["zone.enter"], by_type["line.cross"]
    broken = [
        {k: v for k, v in summary.items() if k != "event_id"},
        {**summary, "schema_version": "2.0"},
        {**summary, "trace_id": "not-a-trace"},
        {**summary, "detections": [{"xyxy": [1, 2, 3], "score": 0.5, "class_id": 0}]},
        {k: v for k, v in enter.items() if k != "zone_id"},
        {**cross, "direction": "sideways"},
        {**summary, "type": "zone.exit"},
    ]
    for event in broken:
        assert not validator.is_valid(event), event


def test_envelope_ids_times_and_summary_fields() -> None:
    events = frame_events(tracked_frame(events=[dict(e) for e in RAISED]), "g")
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    summary = events[0]
    assert summary["capture_time"] == "2026-11-18T11:06:40.123456Z" == iso_time(summary["capture_ns"])
    assert summary["schema_version"] == SCHEMA_VERSION
    assert summary["trace_id"] is None  # untraced frame
    assert summary["count"] == 2
    assert summary["width"] == 640
    assert summary["height"] == 360
    assert summary["detections"][0] == {
        "xyxy": [10.0, 20.0, 50.0, 80.0],
        "score": 0.93,
        "class_id": 0,
        "track_id": 3,
    }
    assert [e["seq"] for e in events] == [7] * len(events)
    assert events[2]["xyxy"] == [11.0, 21.0, 51.0, 81.0]
    assert type(events[2]["track_id"]) is int


def test_summary_policy() -> None:
    empty = Frame("cam0", 0, 0, 1, np.zeros((4, 4, 3), np.uint8), detections=Detections())
    assert [e["type"] for e in frame_events(empty, "g", "every_frame")] == ["detections"]
    assert frame_events(empty, "g", "with_detections") == []
    assert frame_events(tracked_frame(events=[dict(RAISED[0])]), "g", "never")[0]["type"] == "track.start"


def test_traced_frame_carries_its_trace_id() -> None:
    tracer = FrameTracer(TracingSpec(), "g", InMemorySpanExporter())
    frame = tracked_frame()
    tracer.start(frame, "cam0")
    events = frame_events(frame, "g")
    assert re.fullmatch(r"[0-9a-f]{32}", events[0]["trace_id"])
    assert events[0]["trace_id"] == f"{frame.trace.get_span_context().trace_id:032x}"
    tracer.shutdown()


async def test_jsonl_events_mode_writes_the_same_event_objects(
    validator: jsonschema.Draft202012Validator, tmp_path: Path
) -> None:
    sink = JsonlSink(
        JsonlConfig(path="ev.jsonl", mode="events"),
        OperatorContext("ev", NodeMetrics("ev"), output_dir=tmp_path),
    )
    await sink.setup()
    empty = Frame("cam0", 0, 0, 1, np.zeros((4, 4, 3), np.uint8), detections=Detections())
    await sink.process(empty)  # no detections, no events: nothing written
    await sink.process(tracked_frame(events=[dict(e) for e in RAISED]))
    await sink.teardown()
    lines = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["type"] for e in lines] == ["detections"] + [e["type"] for e in RAISED]
    assert all(validator.is_valid(e) for e in lines)


async def test_track_sessions_name_tracks_across_restarts_of_a_stream(
    validator: jsonschema.Draft202012Validator,
) -> None:
    """A stream that starts again (failover, restart) gets a new tracker whose ids start over:
    every event of a tracked frame carries its tracker's session, so (stream, session, id) differ."""
    from operators.track import ByteTrack, ByteTrackConfig

    def run_once() -> list[dict[str, Any]]:
        op = ByteTrack(ByteTrackConfig(hold_last_frame=False), OperatorContext("t", NodeMetrics("t")))
        out: list[dict[str, Any]] = []
        for seq in range(4):
            frame = tracked_frame(seq)
            assert frame.detections is not None
            frame.detections = Detections(
                frame.detections.xyxy, np.array([0.9, 0.8], np.float32), frame.detections.class_id
            )
            coro = op.process(frame)
            try:
                coro.send(None)
            except StopIteration as done:
                (tracked,) = done.value
            out += frame_events(tracked, "g")
        return out

    first, second = run_once(), run_once()
    for events in (first, second):
        assert len({e["track_session"] for e in events}) == 1
        starts = [e for e in events if e["type"] == "track.start"]
        assert [e["track_id"] for e in starts] == [0, 1]  # both trackers number from 0 ...
        for event in events:
            assert not [m.message for m in validator.iter_errors(json.loads(dumps(event)))]
    assert first[0]["track_session"] != second[0]["track_session"]  # ... under different sessions
    untracked = frame_events(tracked_frame(), "g")
    assert all("track_session" not in e for e in untracked)  # no tracker, no session
    assert not validator.is_valid({**json.loads(dumps(first[0])), "track_session": "cam0-1"})
