"""Counters and latency figures per node and per stream, for progress lines and summaries."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

_MAX_SAMPLES = 50_000


class LatencySamples:
    """Latency samples in ms, reservoir-sampled beyond a cap so memory stays bounded."""

    def __init__(self, cap: int = _MAX_SAMPLES) -> None:
        self.cap = cap
        self.count = 0
        self.samples: list[float] = []
        self.recent: list[float] = []  # since the last progress line
        self._rng = random.Random(0)

    def add(self, value_ms: float) -> None:
        self.count += 1
        self.recent.append(value_ms)
        if len(self.recent) > 4096:
            del self.recent[:2048]
        if len(self.samples) < self.cap:
            self.samples.append(value_ms)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.cap:
                self.samples[slot] = value_ms

    def percentiles(self, values: list[float] | None = None) -> dict[str, float | None]:
        data = self.samples if values is None else values
        if not data:
            return {"p50": None, "p95": None, "p99": None}
        p = np.percentile(np.asarray(data), [50, 95, 99])
        return {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "p99": round(float(p[2]), 2)}

    def take_recent(self) -> list[float]:
        out, self.recent = self.recent, []
        return out

    def merge(self, values: list[float]) -> None:
        """Reservoir-sample `values` in, as `add` would (without making them recent)."""
        room = max(0, self.cap - len(self.samples))
        self.samples.extend(values[:room])
        self.count += min(room, len(values))
        for value in values[room:]:
            self.count += 1
            slot = self._rng.randrange(self.count)
            if slot < self.cap:
                self.samples[slot] = value


class StreamState(str, Enum):
    """Where a stream's source is: what the control API shows and the summary's `status` comes from."""

    STARTING = "starting"  # started, no frame yet
    RUNNING = "running"  # frames are flowing
    RECONNECTING = "reconnecting"  # lost or never reached; the source retries (`error`: why)
    ENDED = "ended"  # the source came to its end (a file finished, --max-frames reached)
    STOPPED = "stopped"  # stopped on request (Ctrl-C, SIGTERM, removed) before its end
    FAILED = "failed"  # the source gave up: never opened, unreadable, out of reconnects


# the summary's per-stream `status`: ok, stopped or failed (a summary is taken when all have ended)
_STATUS = {StreamState.ENDED: "ok", StreamState.STOPPED: "stopped", StreamState.FAILED: "failed"}


@dataclass
class NodeMetrics:
    """What one node (or source) did: items in and out, drops by stream and reason."""

    node_id: str
    items_in: int = 0
    items_out: int = 0
    errors: int = 0
    busy_s: float = 0.0
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    batches: Counter[int] = field(default_factory=Counter)  # batch size -> count
    events: Counter[str] = field(default_factory=Counter)  # named counters (reconnects, ...)
    queue_wait: LatencySamples = field(default_factory=lambda: LatencySamples(10_000))
    work: LatencySamples = field(default_factory=lambda: LatencySamples(10_000))
    dropped_removed: Counter[str] = field(default_factory=Counter)  # reason -> drops of forgotten streams
    stream: StreamMetrics | None = None  # a source's metrics: the stream whose state it reports
    last_error: str | None = None  # the latest error the node met (scrubbed): the summary says it

    def source_failed(self, error: str) -> None:
        """A source gave up (`error`: why, credentials already scrubbed): its stream failed."""
        if self.stream is not None:
            self.stream.set_state(StreamState.FAILED, error)

    def source_retrying(self, error: str) -> None:
        """A source lost its stream or could not reach it and retries; the next frame clears it."""
        if self.stream is not None:
            self.stream.set_state(StreamState.RECONNECTING, error)

    def drop(self, stream_id: str, reason: str, n: int = 1) -> None:
        self.dropped[(stream_id, reason)] += n

    def forget_stream(self, stream_id: str) -> int:
        """Fold a stream's drops into the per-reason totals and forget the stream; how many."""
        moved = 0
        for key in [k for k in self.dropped if k[0] == stream_id]:
            n = self.dropped.pop(key)
            self.dropped_removed[key[1]] += n
            moved += n
        return moved

    def to_dict(self) -> dict[str, Any]:
        by_reason: Counter[str] = Counter(self.dropped_removed)
        by_stream: dict[str, dict[str, int]] = {}
        for (stream, reason), n in sorted(self.dropped.items()):
            by_reason[reason] += n
            by_stream.setdefault(stream, {})[reason] = n
        out: dict[str, Any] = {
            "in": self.items_in,
            "out": self.items_out,
            "dropped": sum(self.dropped.values()) + sum(self.dropped_removed.values()),
            "dropped_by_reason": dict(by_reason),
            "dropped_by_stream": by_stream,
            "errors": self.errors,
            "busy_s": round(self.busy_s, 3),
        }
        if self.batches:
            total = sum(self.batches.values())
            out["batches"] = total
            out["mean_batch"] = round(sum(k * v for k, v in self.batches.items()) / total, 2)
        if self.events:
            out["events"] = dict(self.events)
        if self.last_error is not None:
            out["last_error"] = self.last_error
        if self.work.count:
            out["queue_wait_ms"] = self.queue_wait.percentiles()
            out["work_ms"] = self.work.percentiles()
        return out


@dataclass
class StreamMetrics:
    """End-to-end figures of one stream: frames at the source and at the graph's ends."""

    stream_id: str
    frames_in: int = 0
    frames_out: int = 0
    first_out_s: float | None = None
    last_out_s: float | None = None
    latency: LatencySamples = field(default_factory=LatencySamples)
    state: StreamState = StreamState.STARTING
    error: str | None = None  # why it failed or is reconnecting (scrubbed); None while healthy
    _window_out: int = 0

    def set_state(self, state: StreamState, error: str | None = None) -> None:
        """Move to `state`; `error` says why (failed, reconnecting), None clears the last one."""
        self.state, self.error = state, error

    def status(self) -> str:
        """The summary's status: ok (ended), stopped, failed; else the live state (a summary mid-run)."""
        return _STATUS.get(self.state, self.state.value)

    def finished(self, latency_ms: float) -> None:
        now = time.monotonic()
        self.frames_out += 1
        self._window_out += 1
        self.first_out_s = self.first_out_s or now
        self.last_out_s = now
        self.latency.add(latency_ms)

    def fps(self) -> float:
        if self.first_out_s is None or self.last_out_s is None or self.frames_out < 2:
            return 0.0
        span = self.last_out_s - self.first_out_s
        return (self.frames_out - 1) / span if span > 0 else 0.0

    def take_window(self) -> int:
        n, self._window_out = self._window_out, 0
        return n


@dataclass
class RemovedStreams:
    """What the streams forgotten by `Metrics.forget_stream` add up to, so totals never go down."""

    streams: int = 0
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    source_errors: int = 0
    source_events: Counter[str] = field(default_factory=Counter)  # reconnects, ... of their sources
    latency: LatencySamples = field(default_factory=LatencySamples)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streams": self.streams,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "source_errors": self.source_errors,
        }
        if self.source_events:
            out["source_events"] = dict(self.source_events)
        return out


class Metrics:
    """All counters of one run."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeMetrics] = {}
        self.streams: dict[str, StreamMetrics] = {}
        self.removed = RemovedStreams()
        self.started_s = time.monotonic()
        self.primary_sink: str | None = None  # the node whose outputs count as a stream's frames_out

    def node(self, node_id: str) -> NodeMetrics:
        return self.nodes.setdefault(node_id, NodeMetrics(node_id))

    def stream(self, stream_id: str) -> StreamMetrics:
        return self.streams.setdefault(stream_id, StreamMetrics(stream_id))

    def dropped_for(self, stream_id: str) -> int:
        return sum(n for m in self.nodes.values() for (s, _), n in m.dropped.items() if s == stream_id)

    def dropped_by_node(self, stream_id: str) -> dict[str, int]:
        """A stream's drops per node (its source included), nodes with none left out."""
        out: Counter[str] = Counter()
        for nid, m in self.nodes.items():
            for (s, _), n in m.dropped.items():
                if s == stream_id:
                    out[nid] += n
        return dict(out)

    def forget_stream(self, stream_id: str, keep_nodes: Collection[str] = ()) -> None:
        """Release a removed stream's per-stream state; its counts stay in the totals.

        Drops the stream's entry (and its latency samples), its per-stream drop counters at
        every node, and the metrics of its source (the runtime names them after the stream)
        unless the id is in `keep_nodes` (the graph's own nodes). Summaries keep counting it:
        top-level frames_out and latency, each node's dropped and dropped_by_reason, and
        `removed_streams`. A stream added again under the same id starts from zero.
        """
        stream = self.streams.pop(stream_id, None)
        source = None if stream_id in keep_nodes else self.nodes.pop(stream_id, None)
        if stream is None and source is None:
            return
        removed = self.removed
        removed.streams += 1
        if stream is not None:
            removed.frames_in += stream.frames_in
            removed.frames_out += stream.frames_out
            removed.latency.merge(stream.latency.samples)
        if source is not None:
            removed.dropped += sum(source.dropped.values()) + sum(source.dropped_removed.values())
            removed.source_errors += source.errors
            removed.source_events.update(source.events)
        removed.dropped += sum(m.forget_stream(stream_id) for m in self.nodes.values())

    def summary(self, graph_name: str) -> dict[str, Any]:
        duration = time.monotonic() - self.started_s
        streams = {}
        for sid, s in sorted(self.streams.items()):
            streams[sid] = {
                "status": s.status(),
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "frames_out_at": self.primary_sink,
                "dropped": self.dropped_for(sid),
                "dropped_by_node": self.dropped_by_node(sid),
                "fps": round(s.fps(), 2),
                "latency_ms": s.latency.percentiles(),
            }
            if s.error is not None:
                streams[sid]["error"] = s.error
        all_latency = [v for s in self.streams.values() for v in s.latency.samples]
        all_latency += self.removed.latency.samples
        total_out = sum(s.frames_out for s in self.streams.values()) + self.removed.frames_out
        out: dict[str, Any] = {
            "graph": graph_name,
            "duration_s": round(duration, 3),
            "frames_out": total_out,
            "fps": round(total_out / duration, 2) if duration > 0 else 0.0,
            "latency_ms": LatencySamples().percentiles(all_latency),
            "streams": streams,
            "nodes": {nid: m.to_dict() for nid, m in self.nodes.items()},
        }
        if self.removed.streams:
            out["removed_streams"] = self.removed.to_dict()
        return out


def failed_streams(summary: dict[str, Any]) -> dict[str, str]:
    """Stream id -> error of each stream in a summary whose source failed (gave up)."""
    return {
        sid: s.get("error") or "failed"
        for sid, s in summary["streams"].items()
        if s.get("status") == StreamState.FAILED.value
    }


def failing(reason: str) -> bool:
    """A drop reason that means the node could not do its job: an error, or an output it could
    not reach (`rtsp_unavailable`: the RTSP server refused or was down)."""
    return reason.startswith("error:") or reason.endswith("_unavailable")


def failing_nodes(summary: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Node id -> its failure counts, for each node that got items and did its job for none:
    dropped every one by an error or for want of its output (a sink that delivered nothing), or
    passed every one on degraded (an inference node whose model served no frame)."""
    out: dict[str, dict[str, int]] = {}
    for nid, n in summary["nodes"].items():
        errors = {r: c for r, c in n.get("dropped_by_reason", {}).items() if failing(r)}
        degraded = n.get("events", {}).get("degraded_frames", 0)
        if degraded and n.get("last_error"):  # its own failure, not degraded frames passed on
            errors["degraded_frames"] = degraded
        if n.get("in", 0) > 0 and sum(errors.values()) >= n["in"]:
            out[nid] = errors
    return out
