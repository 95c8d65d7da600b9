"""Sinks: `sink.jsonl` (one JSON object per frame or per event) and `sink.null` (benchmarks)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from engine.errors import OperatorError
from engine.events import frame_events, plain
from engine.frame import Frame, Item, Packet, now_ns
from engine.registry import Operator
from engine.spec import StrictModel, template_problem
from engine.tracing import trace_id


class JsonlConfig(StrictModel):
    """Options of `sink.jsonl`."""

    path: str = Field(
        "{graph}.jsonl", description="File name, relative to --output; {graph} is the graph name."
    )
    mode: Literal["frames", "events"] = Field(
        "frames",
        description=(
            "frames: a summary per frame; events: the published events (engine/events.py), one a line: "
            "a detection summary for frames with detections, and each event operators raised."
        ),
    )
    flush_interval_s: float = Field(1.0, ge=0, description="How often buffered lines are flushed.")

    @field_validator("path")
    @classmethod
    def _fillable(cls, value: str) -> str:
        if (why := template_problem(value, ("graph",))) is not None:
            raise ValueError(why + " (one file holds every stream: each line names its stream)")
        return value


def frame_record(frame: Frame, graph: str) -> dict[str, Any]:
    """The JSON-ready summary of a frame: ids, timing, detections, degradation."""
    det = frame.detections
    record: dict[str, Any] = {
        "graph": graph,
        "stream_id": frame.stream_id,
        "seq": frame.seq,
        "pts": frame.pts,
        "capture_ns": frame.capture_ns,
        "latency_ms": round((now_ns() - frame.capture_ns) / 1e6, 3),
        "width": frame.width,
        "height": frame.height,
        "degraded": sorted(frame.degraded),
        "trace_id": trace_id(frame),
    }
    if det is not None:
        record["detections"] = [
            {
                "xyxy": [round(float(v), 1) for v in det.xyxy[i]],
                "score": round(float(det.score[i]), 4),
                "class_id": int(det.class_id[i]),
                **({"track_id": int(det.track_id[i])} if det.track_id is not None else {}),
            }
            for i in range(len(det))
        ]
    if frame.events:
        record["events"] = frame.events
    return record


def _why(e: OSError) -> str:
    if isinstance(e, FileExistsError | NotADirectoryError):
        return "a file is in the way of its directory (--output must name a directory)"
    return e.strerror or str(e)


def output_problem(path: Path) -> None:
    """Raise OperatorError if `path` could not be written (a file where a directory must be, a
    directory that cannot be made), without creating anything."""
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OperatorError(f"cannot write {path}: {parent} is a file, not a directory (--output)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OperatorError(f"cannot write {path}: {parent} is not writable")
            return


class JsonlSink(Operator[JsonlConfig]):
    """Appends JSON lines to a file under the run's output directory; passes frames on.

    Lines are buffered and appended with one `write` of whole lines on an O_APPEND descriptor,
    so several processes (`framegraph run --processes K`) can share one file without ever
    splitting or interleaving a line.
    """

    consumes, produces = "any", "same"
    Config = JsonlConfig
    _fd: int | None = None
    _lines: list[str]
    _last_flush_s: float = 0.0

    @property
    def path(self) -> Path:
        return self.ctx.output_dir / self.config.path.format(graph=self.ctx.graph_name)

    async def setup(self) -> None:
        self._lines = []
        if self.ctx.preflight:  # validate --connect: say whether it could write, write nothing
            output_problem(self.path)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise OperatorError(f"node {self.ctx.node_id}: cannot write {self.path}: {_why(e)}") from e

    async def teardown(self) -> None:
        if self._fd is not None:
            self._flush()
            os.close(self._fd)
            self._fd = None

    def _flush(self) -> None:
        if self._fd is None or not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines = []
        while data:  # a regular file takes it in one write; a short write continues where it stopped
            data = data[os.write(self._fd, data) :]

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self._flush()
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame) and self._fd is not None:
            if self.config.mode == "frames":
                self._lines.append(json.dumps(frame_record(item, self.ctx.graph_name)) + "\n")
            else:
                for event in frame_events(item, self.ctx.graph_name, "with_detections"):
                    self._lines.append(json.dumps(event, default=plain) + "\n")
            now = time.monotonic()
            if now - self._last_flush_s >= self.config.flush_interval_s:
                self._flush()
                self._last_flush_s = now
        return (item,)


class NullSink(Operator[Any]):
    """Discards nothing and writes nothing: ends a graph for benchmarks (frames are counted)."""

    consumes, produces = "any", "same"

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame | Packet):
            raise TypeError(f"sink.null takes frames or packets, got {type(item).__name__}")
        return (item,)
