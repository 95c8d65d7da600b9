"""One run of a graph in this process: the plan (sources cleared, a probe added), the runtime, a sampler.

Streams come and go with `Runtime.add_stream`/`remove_stream` (keep_alive), as in a worker.
Every `sample_s` the sampler appends one JSON line to the timeline: per stream frames in and
out, drops by reason and the latencies of the frames finished since the last line; the
process's RSS, fds and threads; the Kafka sink's counters and what the consumer has read.
Lines go to a file, not to memory, so the sampler adds nothing to the RSS it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.metrics import LatencySamples, Metrics
from engine.plan import Edge, GraphPlan, NodePlan, load_plan, source_plan
from engine.runtime import RunOptions, Runtime
from engine.spec import NodeSpec, QueueSpec
from loadtests.reliability.options import FAST_RECONNECT
from loadtests.reliability.probe import OP_NAME, PROBE_ID, Probe, ProbeConfig
from loadtests.reliability.services import process_stats


@dataclass
class GraphInfo:
    """The nodes of a graph the runner needs to reach, by their operator."""

    path: Path
    triton: list[str]
    models: list[str]
    preprocess: list[str]
    kafka: list[str]
    video: list[str]
    redact: list[str]

    @classmethod
    def inspect(cls, path: Path) -> GraphInfo:
        plan = load_plan(path)
        by_op: dict[str, list[str]] = {}
        for n in plan.nodes:
            by_op.setdefault(n.op, []).append(n.spec.id)
        feeding_triton = {e.src for e in plan.edges if e.dst in by_op.get("infer.triton", [])}
        models = sorted({str(getattr(n.config, "model", "")) for n in plan.nodes if n.op == "infer.triton"})
        return cls(
            path,
            by_op.get("infer.triton", []),
            models,
            [n for n in by_op.get("preprocess.cpu", []) if n in feeding_triton],
            by_op.get("sink.kafka", []),
            by_op.get("sink.file", []),
            by_op.get("redact", []),
        )

    def overrides(
        self,
        triton_url: str | None,
        detect_size: tuple[int, int] | None,
        bootstrap: str | None,
        topic: str,
        spool_dir: Path,
    ) -> list[str]:
        """`--set` assignments: the run's own Triton and broker, and the detector input size."""
        out: list[str] = []
        for node in self.triton:
            if triton_url:
                out.append(f"nodes.{node}.config.url={triton_url}")
        for node in self.preprocess:
            if detect_size:
                out += [
                    f"nodes.{node}.config.width={detect_size[0]}",
                    f"nodes.{node}.config.height={detect_size[1]}",
                ]
        for node in self.kafka:
            if bootstrap:
                out += [
                    f"nodes.{node}.config.bootstrap={bootstrap}",
                    f"nodes.{node}.config.topic={topic}",
                    f"nodes.{node}.config.spool_dir={spool_dir}",
                    f"nodes.{node}.config.drain_timeout_s=120",  # the end of a run delivers everything
                ]
        return out


def plan_with_probe(path: Path, overrides: list[str], origin_s: float) -> GraphPlan:
    """load_plan(path, overrides) with its sources cleared and the probe tapping the redact node.

    The probe is placed right after the node it taps, so the graph's last terminal node (the
    one whose arrivals make the per-stream fps and latency) stays the same.
    """
    plan = load_plan(path, overrides)
    terminals = [n.spec.id for n in plan.nodes if not any(e.src == n.spec.id for e in plan.edges)]
    redact = [n.spec.id for n in plan.nodes if n.op == "redact"]
    tap = redact[0] if redact else next(e.src for e in plan.edges if e.dst == terminals[-1])
    queue = QueueSpec(size=256, policy="block")
    spec = NodeSpec(id=PROBE_ID, op=OP_NAME, inputs=[tap], queue=queue)
    probe = NodePlan(spec, Probe, ProbeConfig(origin_s=origin_s), OP_NAME)
    nodes = list(plan.nodes)
    nodes.insert(next(i for i, n in enumerate(nodes) if n.spec.id == tap) + 1, probe)
    return replace(plan, sources=[], nodes=nodes, edges=[*plan.edges, Edge(tap, PROBE_ID, queue)])


def camera_plan(stream_id: str, url: str) -> Any:
    """A stream given at run time, as the control API takes it: fast reconnects."""
    return source_plan({"id": stream_id, "url": url, "config": dict(FAST_RECONNECT)})


def reservoir_samples(metrics: Metrics) -> int:
    """Latency samples the engine holds (reservoirs fill up to their caps, then stay flat)."""
    held: list[LatencySamples] = [s.latency for s in metrics.streams.values()]
    for m in metrics.nodes.values():
        held += [m.queue_wait, m.work]
    return sum(len(x.samples) + len(x.recent) for x in held)


class Timeline:
    """The sampler's JSON lines, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")

    def rows(self) -> Iterator[dict[str, Any]]:
        with self.path.open() as f:
            for line in f:
                yield json.loads(line)


class Session:
    """A runtime over one plan, with its sampler; streams added and removed while it runs."""

    def __init__(
        self,
        plan: GraphPlan,
        output_dir: Path,
        timeline: Timeline,
        origin_s: float,
        sample_s: float,
        phase: str,
        kafka_node: str | None = None,
        consumed: Callable[[], int] | None = None,
    ) -> None:
        self.runtime = Runtime(plan, RunOptions(output_dir=output_dir, keep_alive=True))
        self.plan = plan
        self.timeline = timeline
        self.origin_s = origin_s
        self.sample_s = sample_s
        self.phase = phase
        self.kafka_node = kafka_node
        self.consumed = consumed
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._sampler: asyncio.Task[None] | None = None

    def now(self) -> float:
        """Seconds since the run's origin (the timeline's clock)."""
        return time.monotonic() - self.origin_s

    async def start(self, timeout_s: float = 120.0) -> None:
        """Set up every operator (models checked, brokers connected); return once frames may flow."""
        self._task = asyncio.create_task(self.runtime.run())
        last = self.plan.nodes[-1].spec.id
        deadline = time.monotonic() + timeout_s
        while not any(t.get_name() == last for t in asyncio.all_tasks()):
            if self._task.done():
                self._task.result()  # setup failed: raise its error
                raise RuntimeError("the graph ended during setup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"graph setup took over {timeout_s} s")
            await asyncio.sleep(0.05)
        self._sampler = asyncio.create_task(self._sample_loop())

    def add(self, stream_id: str, url: str) -> None:
        self.runtime.add_stream(camera_plan(stream_id, url))

    async def remove(self, stream_id: str) -> None:
        await self.runtime.remove_stream(stream_id)

    @property
    def probe(self) -> Probe:
        op = self.runtime.operator(PROBE_ID)
        assert isinstance(op, Probe)
        return op

    def kafka_counters(self) -> dict[str, int]:
        if self.kafka_node is None:
            return {}
        return dict(self.runtime.metrics.node(self.kafka_node).events)

    async def stop(self, timeout_s: float = 180.0) -> dict[str, Any]:
        """Stop every stream; the graph drains (the Kafka sink delivers what it holds); the summary."""
        assert self._task is not None
        self.runtime.stop()
        try:
            summary = await asyncio.wait_for(self._task, timeout_s)
        finally:
            if self._sampler is not None:
                self._sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sampler
        self.sample(final=True)
        return summary

    async def _sample_loop(self) -> None:
        next_at = time.monotonic()
        while True:
            next_at += self.sample_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            self.sample()

    def sample(self, final: bool = False) -> None:
        """Append one timeline line (`final`: after the graph drained, not a regular interval)."""
        metrics = self.runtime.metrics
        drops: dict[str, dict[str, int]] = {}
        for m in metrics.nodes.values():
            for (sid, reason), n in m.dropped.items():
                drops.setdefault(sid, {})
                drops[sid][reason] = drops[sid].get(reason, 0) + n
        streams = {
            sid: {
                "in": s.frames_in,
                "out": s.frames_out,
                "drops": drops.get(sid, {}),
                "lat": [round(v, 1) for v in s.latency.take_recent()],
                "live": sid in self.runtime.streams,
            }
            for sid, s in metrics.streams.items()
        }
        row: dict[str, Any] = {"t": round(self.now(), 3), "phase": self.phase, **process_stats()}
        if final:
            row["final"] = True
        row["reservoir"] = reservoir_samples(metrics)
        row["streams"] = streams
        if self.kafka_node is not None:
            row["kafka"] = self.kafka_counters()
            if self.consumed is not None:
                row["kafka"]["consumed_unique"] = self.consumed()
        self.timeline.append(row)
