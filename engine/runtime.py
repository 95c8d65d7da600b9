"""The async runtime: runs a validated graph, one task per source and per node lane."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FramegraphError, OperatorError
from engine.frame import Control, ControlKind, Item, Message, now_ns
from engine.metrics import Metrics, NodeMetrics, StreamState
from engine.plan import ALL_SOURCES, GraphPlan, NodePlan, SourcePlan
from engine.queues import EdgeQueue, Inbox
from engine.registry import Operator, OperatorContext, Source, SourceContext
from engine.spec import QueueSpec
from engine.tracing import FrameTracer
from operators.urls import scrub

log = logging.getLogger("framegraph.runtime")
_ERRORS_LOGGED_PER_NODE = 5


@dataclass
class RunOptions:
    """How to run a plan: limits and where outputs go."""

    max_frames: int | None = None  # per stream
    output_dir: Path = field(default_factory=lambda: Path("out"))
    device: str | None = None  # None: the device the plan chose
    threads: int = 64  # blocking work (decode, numpy) runs here
    span_exporter: Any = None  # tests: an OpenTelemetry exporter that overrides the graph's
    keep_alive: bool = False  # a worker: run with no streams until stopped; streams come and go


class _Node:
    """Runtime state of one node: operator, inbox, output edges, open streams."""

    def __init__(self, plan: NodePlan, op: Operator[Any], metrics: NodeMetrics) -> None:
        self.plan = plan
        self.op = op
        self.metrics = metrics
        self.inbox = Inbox()
        self.outputs: list[EdgeQueue] = []
        self.open_streams: dict[str, int] = {}
        self.primary_terminal = False
        self.errors_logged = 0

    @property
    def id(self) -> str:
        return self.plan.spec.id


@dataclass
class _Stream:
    """A running source: its operator, output edges, stop signal and task."""

    plan: SourcePlan
    source: Source[Any]
    outputs: list[EdgeQueue]
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None


class _LaneAssignment:
    """Which lane of a node with `workers` lanes serves each stream: the least busy one when the
    stream first starts. (Hashing stream ids put cam0..cam3 on 2 of 4 lanes.) A stream keeps its
    lane after its END, so that a stream started again under the same id is queued behind its old
    END, never beside it; the oldest of those ended streams are forgotten past `keep_ended`."""

    def __init__(self, lanes: int, keep_ended: int = 1024) -> None:
        self.streams_on = [0] * lanes  # open streams per lane
        self.by_stream: dict[str, int] = {}
        self.open: dict[str, int] = {}  # START minus END per open stream (one per input edge)
        self.ended: OrderedDict[str, None] = OrderedDict()
        self.keep_ended = keep_ended

    def lane(self, msg: Message) -> int:
        sid = msg.stream_id
        i = self.by_stream.get(sid)
        if i is None:
            i = self.by_stream[sid] = min(range(len(self.streams_on)), key=self.streams_on.__getitem__)
            self.streams_on[i] += 1
            self.open[sid] = 0
        elif sid in self.ended:  # started again: back on its old lane
            del self.ended[sid]
            self.streams_on[i] += 1
            self.open[sid] = 0
        if isinstance(msg, Control) and msg.kind is ControlKind.START:
            self.open[sid] += 1
        elif isinstance(msg, Control) and msg.kind is ControlKind.END:
            self.open[sid] -= 1
            if self.open[sid] <= 0:
                del self.open[sid]
                self.streams_on[i] -= 1
                self.ended[sid] = None
                if len(self.ended) > self.keep_ended:
                    del self.by_stream[self.ended.popitem(last=False)[0]]
        return i


class Runtime:
    """Runs one graph: until its sources end, or (keep_alive) until stopped while streams come and go."""

    def __init__(self, plan: GraphPlan, options: RunOptions | None = None) -> None:
        self.plan = plan
        self.options = options or RunOptions()
        self.metrics = Metrics()
        self.stop_event = asyncio.Event()
        self._nodes: dict[str, _Node] = {}
        self.streams: dict[str, _Stream] = {}
        self._keepalive: list[EdgeQueue] = []
        self._built = False
        self._started = False  # set up and streaming: add_stream starts a stream at once
        self._pending: list[SourcePlan] = []  # streams added while the graph was being set up
        tracing = plan.spec.tracing
        self.tracer: FrameTracer | None = None
        if tracing.exporter != "none" or self.options.span_exporter is not None:
            self.tracer = FrameTracer(tracing, plan.spec.name, self.options.span_exporter)

    def operator(self, node_id: str) -> Operator[Any]:
        """The operator instance of a node (after `run` has started); for tests and tools."""
        return self._nodes[node_id].op

    def stop(self) -> None:
        """Ask sources to end; the graph drains and `run` returns."""
        self.stop_event.set()
        for stream in self.streams.values():
            stream.stop.set()
        for q in self._keepalive:
            q.close()

    def add_stream(self, plan: SourcePlan) -> None:
        """Start a stream while the graph runs; it feeds every node whose inputs name 'sources'."""
        sid = plan.spec.id
        if sid in self.streams and not self._finished(sid):
            raise FramegraphError(f"stream {sid!r} is already running")
        if self.stop_event.is_set():
            raise FramegraphError("the graph is stopping")
        if not self._started:  # nodes not set up yet: it starts with the graph's own streams
            if any(p.spec.id == sid for p in self._pending):
                raise FramegraphError(f"stream {sid!r} is already running")
            self._pending.append(plan)
            return
        self.streams.pop(sid, None)
        stream = self._make_stream(
            plan, [(n.id, q) for n in self._consumers() for s, q in n.plan.spec.edges() if s == ALL_SOURCES]
        )
        stream.task = asyncio.create_task(self._run_source(stream), name=sid)

    async def remove_stream(self, stream_id: str) -> None:
        """Stop a stream; its per-stream state is released downstream (stream end)."""
        pending = [p for p in self._pending if p.spec.id == stream_id]
        if pending:  # added before the graph was set up, not started yet
            self._pending.remove(pending[0])
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            raise KeyError(stream_id)
        stream.stop.set()
        if stream.task is not None:
            await asyncio.wait([stream.task])  # done or cancelled (the graph stopping): either is final
        self.streams.pop(stream_id, None)
        self.metrics.forget_stream(stream_id, keep_nodes=self._nodes)  # totals keep its counts

    def _finished(self, stream_id: str) -> bool:
        task = self.streams[stream_id].task
        return task is not None and task.done()

    def _consumers(self) -> list[_Node]:
        return [n for n in self._nodes.values() if any(s == ALL_SOURCES for s, _ in n.plan.spec.edges())]

    def instances(self) -> tuple[list[tuple[str, str, Operator[Any]]], list[tuple[str, str, Source[Any]]]]:
        """The graph's operators (id, op, instance) in graph order and its sources (id, op,
        instance), made as a run makes them but not started: for engine.preflight."""
        if not self._built:
            self._build()
            self._built = True
        nodes = [(n.id, n.plan.op, n.op) for n in self._nodes.values()]
        sources = [(sid, s.plan.spec.resolved_op, s.source) for sid, s in self.streams.items()]
        return nodes, sources

    async def _setup_all(self) -> None:
        """Set up the operators in graph order; on a failure, tear down those already set up."""
        started: list[_Node] = []
        try:
            for node in self._nodes.values():
                try:
                    await node.op.setup()
                except FramegraphError:
                    raise
                except Exception as e:  # a plugin's own error: one line naming the node, no traceback
                    what = f"{type(e).__name__}: {scrub(str(e))}".rstrip(": ")
                    raise OperatorError(f"node {node.id} ({node.plan.op}): setup failed: {what}") from e
                started.append(node)
        except Exception:
            for node in reversed(started):
                await node.op.teardown()
                node.op.ctx.close()
            raise

    async def run(self) -> dict[str, Any]:
        """Set up every operator, run all streams through, tear down; return the summary."""
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.options.threads, "framegraph"))
        self.metrics.started_s = time.monotonic()
        self._build()
        await self._setup_all()
        tasks = [asyncio.create_task(self._run_node(n), name=n.id) for n in self._nodes.values()]
        for stream in self.streams.values():
            stream.task = asyncio.create_task(self._run_source(stream), name=stream.plan.spec.id)
        self._started = True
        pending, self._pending = self._pending, []
        for plan in pending:  # a worker claims streams while the graph is still being set up
            if not self.stop_event.is_set():
                self.add_stream(plan)
        try:
            await asyncio.gather(*tasks)
        finally:
            sources = [s.task for s in self.streams.values() if s.task is not None]
            for t in [*tasks, *sources]:
                t.cancel()
            await asyncio.gather(*tasks, *sources, return_exceptions=True)
            if self.tracer is not None:
                self.tracer.shutdown()
        return self.metrics.summary(self.plan.spec.name)

    def _build(self) -> None:
        opts = self.options
        configs = {n.spec.id: n.config for n in self.plan.nodes}
        for np_ in self.plan.nodes:
            m = self.metrics.node(np_.spec.id)
            device = opts.device or self.plan.device
            ctx = OperatorContext(np_.spec.id, m, device, opts.output_dir, self.plan.spec.name)
            ctx.tracer = self.tracer
            ctx.pinned_threads = max(1, np_.spec.workers)
            ctx.upstream = [
                configs[e.src] for e in self.plan.edges if e.dst == np_.spec.id and e.src in configs
            ]
            self._nodes[np_.spec.id] = _Node(np_, np_.cls(np_.config, ctx), m)
        for edge in self.plan.edges:
            if edge.src in self._nodes:
                dst = self._nodes[edge.dst]
                self._nodes[edge.src].outputs.append(
                    EdgeQueue(edge.src, edge.dst, edge.queue, dst.inbox, dst.metrics)
                )
        for sp in self.plan.sources:
            self._make_stream(sp, [(e.dst, e.queue) for e in self.plan.edges if e.src == sp.spec.id])
        if opts.keep_alive:  # an edge that stays open until stop: nodes outlive their streams
            for node in self._consumers():
                self._keepalive.append(EdgeQueue("", node.id, node.plan.spec.queue, node.inbox, node.metrics))
        terminals = [n for n in self._nodes.values() if not n.outputs]
        terminals[-1].primary_terminal = True
        self.metrics.primary_sink = terminals[-1].id

    def _make_stream(self, plan: SourcePlan, targets: list[tuple[str, QueueSpec]]) -> _Stream:
        sid = plan.spec.id
        stop = asyncio.Event()
        if self.stop_event.is_set():
            stop.set()
        ctx = SourceContext(sid, plan.spec.url, self.metrics.node(sid), stop, self.options.max_frames)
        state = self.metrics.stream(sid)
        state.set_state(StreamState.STARTING)  # a stream started again under an id that ended
        ctx.metrics.stream = state  # the source reports failures and reconnects there
        outputs = [
            EdgeQueue(sid, dst, queue, self._nodes[dst].inbox, self._nodes[dst].metrics)
            for dst, queue in targets
        ]
        stream = _Stream(plan, plan.cls(plan.config, ctx), outputs, stop)
        self.streams[sid] = stream
        self.metrics.stream(sid)
        return stream

    async def _run_source(self, handle: _Stream) -> None:
        """Run a source to its end; its stream's state follows: running on frames, then ended,
        stopped (on request) or failed (it raised, or counted an error and ended with a reason)."""
        source, plan, outputs = handle.source, handle.plan, handle.outputs
        stream = self.metrics.stream(plan.spec.id)
        errors_before = source.ctx.metrics.errors
        sent_end = False

        async def emit(msg: Message) -> None:
            nonlocal sent_end
            if isinstance(msg, Control):
                if msg.kind is ControlKind.END and not sent_end:
                    sent_end = True
                    gave_up = source.ctx.metrics.errors > errors_before and msg.reason
                    if gave_up and stream.state is not StreamState.FAILED:
                        stream.set_state(StreamState.FAILED, scrub(msg.reason))
            else:
                if stream.state is not StreamState.RUNNING:
                    stream.set_state(StreamState.RUNNING)
                stream.frames_in += 1
                source.ctx.metrics.items_out += 1
                if self.tracer is not None:
                    self.tracer.start(msg, plan.spec.id)
                msg.emitted_ns = now_ns()
            # every copy made before the first put: a consumer may change `msg` while a put waits
            copies = [
                msg if i == 0 or isinstance(msg, Control) else msg.branch() for i in range(len(outputs))
            ]
            for q, copy in zip(outputs, copies, strict=True):
                await q.put(copy)

        try:
            await source.run(emit)
        except Exception as e:
            log.error("source %s failed: %s", plan.spec.id, scrub(str(e)))
            source.ctx.metrics.errors += 1
            stream.set_state(StreamState.FAILED, scrub(str(e)) or type(e).__name__)
        finally:
            if stream.state is not StreamState.FAILED:
                stopped = handle.stop.is_set()  # asked to stop before it came to its end
                stream.set_state(StreamState.STOPPED if stopped else StreamState.ENDED, stream.error)
            if not sent_end:
                for q in outputs:
                    await q.put(Control(ControlKind.END, plan.spec.id, reason="source stopped"))
            for q in outputs:
                q.close()

    async def _run_node(self, node: _Node) -> None:
        try:
            spec = node.plan.spec
            if node.op.batching:
                await self._batch_loop(node)
            elif spec.workers > 1:
                await self._lane_loop(node, spec.workers)
            else:
                while (msg := await node.inbox.get()) is not None:
                    await self._handle(node, msg)
        finally:
            try:
                await node.op.teardown()
            finally:
                node.op.ctx.close()
                for q in node.outputs:
                    q.close()

    async def _lane_loop(self, node: _Node, workers: int) -> None:
        """`workers` lanes, each a stream's for as long as it is open: a stream's items keep their
        order, and streams run side by side up to `workers` at a time."""
        lanes: list[asyncio.Queue[Message | None]] = [asyncio.Queue(2) for _ in range(workers)]
        assign = _LaneAssignment(workers)

        async def lane(q: asyncio.Queue[Message | None]) -> None:
            while (msg := await q.get()) is not None:
                await self._handle(node, msg)

        tasks = [asyncio.create_task(lane(q)) for q in lanes]
        try:
            while (msg := await node.inbox.get()) is not None:
                await lanes[assign.lane(msg)].put(msg)
            for q in lanes:
                await q.put(None)
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _batch_loop(self, node: _Node) -> None:
        """Form batches across streams; with `workers` > 1, keep that many in flight.

        Results are emitted in the order the batches were formed, so per-stream order holds.
        """
        batch_spec = node.plan.spec.batch
        max_batch = batch_spec.max_batch if batch_spec else 1
        delay_s = (batch_spec.max_delay_ms if batch_spec else 0.0) / 1000
        in_flight: deque[asyncio.Task[Sequence[Item] | None]] = deque()

        async def drain(keep: int) -> None:
            while len(in_flight) > keep:
                out = await in_flight.popleft()
                if out is not None:
                    await self._emit(node, out)

        loop = asyncio.get_running_loop()
        try:
            await self._batches(node, max_batch, delay_s, loop, in_flight, drain)
            await drain(0)
        finally:
            for task in in_flight:
                task.cancel()

    async def _batches(
        self,
        node: _Node,
        max_batch: int,
        delay_s: float,
        loop: asyncio.AbstractEventLoop,
        in_flight: deque[asyncio.Task[Sequence[Item] | None]],
        drain: Callable[[int], Awaitable[None]],
    ) -> None:
        workers = node.plan.spec.workers
        while (first := await node.inbox.get()) is not None:
            if isinstance(first, Control):
                await drain(0)
                await self._control(node, first)
                continue
            batch: list[Item] = [first]
            deadline = loop.time() + delay_s
            pending: Control | None = None
            while len(batch) < max_batch:
                msg = await node.inbox.get(timeout_s=max(0.0, deadline - loop.time()))
                if msg is None:
                    break
                if isinstance(msg, Control):
                    pending = msg  # a stream boundary closes the batch: order is kept
                    break
                batch.append(msg)
            in_flight.append(asyncio.create_task(self._work(node, batch)))
            await drain(workers - 1)
            if pending is not None:
                await drain(0)
                await self._control(node, pending)

    async def _handle(self, node: _Node, msg: Message) -> None:
        if isinstance(msg, Control):
            await self._control(node, msg)
        else:
            await self._process(node, [msg])

    async def _process(self, node: _Node, items: list[Item]) -> None:
        out = await self._work(node, items)
        if out is not None:
            await self._emit(node, out)

    async def _work(self, node: _Node, items: list[Item]) -> Sequence[Item] | None:
        """Run the operator on items; None when it failed (the items are counted as dropped)."""
        node.metrics.items_in += len(items)
        if node.op.batching:
            node.metrics.batches[len(items)] += 1
        started = now_ns()
        try:
            if node.op.batching:
                out = await node.op.process_batch(items)
            else:
                out = await node.op.process(items[0])
        except Exception as e:
            self._failed(node, items, e)
            return None
        finally:
            ended = now_ns()
            node.metrics.busy_s += (ended - started) / 1e9
        work_ms = (ended - started) / 1e6
        for item in items:
            enqueued = item.emitted_ns or started
            node.metrics.queue_wait.add((started - enqueued) / 1e6)
            node.metrics.work.add(work_ms)
            if self.tracer is not None:
                self.tracer.stage(item, node.id, enqueued, started, ended)
        return out

    def _failed(self, node: _Node, items: list[Item], e: Exception) -> None:
        node.metrics.errors += 1
        reason = f"error:{type(e).__name__}"
        node.metrics.last_error = f"{type(e).__name__}: {scrub(str(e))}"
        for item in items:
            node.metrics.drop(item.stream_id, reason)
        if node.errors_logged < _ERRORS_LOGGED_PER_NODE:
            node.errors_logged += 1
            log.warning("node %s dropped %d item(s): %s: %s", node.id, len(items), reason, scrub(str(e)))

    async def _emit(self, node: _Node, out: Sequence[Item]) -> None:
        node.metrics.items_out += len(out)
        t = now_ns()
        if not node.outputs:
            if node.primary_terminal:
                for item in out:
                    self.metrics.stream(item.stream_id).finished((t - item.capture_ns) / 1e6)
                    if self.tracer is not None:
                        self.tracer.finish(item, t)
            return
        for item in out:
            item.emitted_ns = t
            # a fan-out: each branch gets a frame of its own, every copy made before the first put
            # (while a put waits on a full queue, the consumer of an earlier one may change `item`)
            copies = [item if i == 0 else item.branch() for i in range(len(node.outputs))]
            for q, copy in zip(node.outputs, copies, strict=True):
                await q.put(copy)

    async def _control(self, node: _Node, msg: Control) -> None:
        sid = msg.stream_id
        op = node.op
        try:
            if msg.kind is ControlKind.START:
                node.open_streams[sid] = node.open_streams.get(sid, 0) + 1
                if node.open_streams[sid] > 1:
                    return  # the same stream arriving on a second input edge
                if msg.info is None:
                    raise OperatorError(f"stream {sid} started without stream info")
                await op.on_stream_start(msg.info)
            elif msg.kind is ControlKind.RESET and msg.info is not None:
                await self._emit(node, await op.on_stream_reset(msg.info))
            elif msg.kind is ControlKind.LOST:
                await op.on_stream_lost(sid, scrub(msg.reason), msg.at_ns)
            elif msg.kind is ControlKind.END:
                left = node.open_streams.get(sid, 1) - 1
                if left > 0:
                    node.open_streams[sid] = left
                    return
                node.open_streams.pop(sid, None)
                op.ctx.end_reasons[sid] = scrub(msg.reason or "")
                op.ctx.end_at_ns[sid] = msg.at_ns
                try:
                    await self._emit(node, await op.on_stream_end(sid))
                finally:
                    op.ctx.end_reasons.pop(sid, None)
                    op.ctx.end_at_ns.pop(sid, None)
        except Exception as e:
            node.metrics.errors += 1
            log.error("node %s: stream %s %s hook failed: %s", node.id, sid, msg.kind.value, scrub(str(e)))
        for q in node.outputs:
            await q.put(msg)
        if msg.kind is ControlKind.END and node.primary_terminal and sid not in self.streams:
            # a removed stream's last frames were still in flight when remove_stream returned
            self.metrics.forget_stream(sid, keep_nodes=self._nodes)
