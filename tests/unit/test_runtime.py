"""The runtime: per-stream order, queue policies under a slow consumer, batching, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from engine.frame import Frame, Item
from engine.registry import register
from engine.runtime import RunOptions, Runtime
from engine.testing import CollectOperator, SlowOperator, plan_from_yaml, run_graph


def graph(sources: str, nodes: str) -> str:
    return f"name: t\nsources:\n{sources}\nnodes:\n{nodes}\n"


def synthetic(n_streams: int, frames: int, fps: float = 0) -> str:
    return "\n".join(
        f"  - {{id: s{i}, url: synthetic, op: test.synthetic, config: {{frames: {frames}, fps: {fps}}}}}"
        for i in range(n_streams)
    )


def seqs_by_stream(op: CollectOperator) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for item in op.items:
        out.setdefault(item.stream_id, []).append(item.seq)
    return out


async def test_order_per_stream_is_kept_across_parallel_lanes() -> None:
    nodes = """\
  - {id: work, op: test.slow, inputs: [sources], workers: 3, config: {delay_ms: 1}}
  - {id: out, op: test.collect, inputs: [work], queue: {size: 64}}"""
    runtime, summary = await run_graph(graph(synthetic(4, 50), nodes))
    got = seqs_by_stream(runtime.operator("out"))  # type: ignore[arg-type]
    assert got == {f"s{i}": list(range(50)) for i in range(4)}
    assert summary["nodes"]["out"]["dropped"] == 0


class _Concurrency(SlowOperator):
    """test.slow that records how many streams it was working on at once."""

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.active: set[str] = set()
        self.most = 0

    async def process(self, item: Item) -> Sequence[Item]:
        self.active.add(item.stream_id)
        self.most = max(self.most, len(self.active))
        try:
            return await super().process(item)
        finally:
            self.active.discard(item.stream_id)


register("test.concurrency")(_Concurrency)


async def test_every_lane_gets_a_stream_of_its_own() -> None:
    """cam0..cam3 on 4 lanes run side by side (hashing their ids used 2 of the 4 lanes)."""
    sources = "\n".join(
        f"  - {{id: cam{i}, url: synthetic, op: test.synthetic, config: {{frames: 20}}}}" for i in range(4)
    )
    nodes = """\
  - {id: work, op: test.concurrency, inputs: [sources], workers: 4, config: {delay_ms: 5}}
  - {id: out, op: test.collect, inputs: [work], queue: {size: 64}}"""
    runtime, _ = await run_graph(graph(sources, nodes))
    assert runtime.operator("work").most == 4  # type: ignore[attr-defined]
    got = seqs_by_stream(runtime.operator("out"))  # type: ignore[arg-type]
    assert got == {f"cam{i}": list(range(20)) for i in range(4)}


def test_a_stream_started_again_keeps_its_lane_and_ended_streams_free_theirs() -> None:
    from engine.frame import Control, ControlKind
    from engine.runtime import _LaneAssignment

    lanes = _LaneAssignment(2, keep_ended=1)

    def start(sid: str) -> int:
        return lanes.lane(Control(ControlKind.START, sid))

    def end(sid: str) -> int:
        return lanes.lane(Control(ControlKind.END, sid))

    assert [start("a"), start("b")] == [0, 1]
    assert end("a") == 0  # a's lane is free again ...
    assert start("c") == 0  # ... and the next new stream takes it
    assert start("a") == 0  # a, started again, goes behind its own END, beside c
    assert [end("a"), end("b"), end("c")] == [0, 1, 0]
    assert len(lanes.by_stream) == 1  # only the last ended stream is remembered (keep_ended=1)
    # a stream arriving on two input edges ends with its second END
    assert [start("d"), start("d"), end("d")] == [0, 0, 0]
    assert start("e") == 1
    assert end("d") == 0
    assert start("f") == 0


async def test_block_policy_loses_nothing_and_slows_the_producer() -> None:
    nodes = """\
  - {id: slow, op: test.slow, inputs: [sources], queue: {size: 2, policy: block}, config: {delay_ms: 5}}
  - {id: out, op: test.collect, inputs: [slow]}"""
    runtime, summary = await run_graph(graph(synthetic(1, 40), nodes))
    assert seqs_by_stream(runtime.operator("out")) == {"s0": list(range(40))}  # type: ignore[arg-type]
    assert summary["streams"]["s0"]["dropped"] == 0


async def test_drop_oldest_keeps_the_freshest_and_counts_the_rest() -> None:
    # 200 fps camera into a 20 fps consumer: the queue of 3 keeps the newest frames
    nodes = """\
  - {id: slow, op: test.slow, inputs: [sources], queue: {size: 3, policy: drop_oldest}, config: {delay_ms: 50}}
  - {id: out, op: test.collect, inputs: [slow]}"""
    runtime, summary = await run_graph(graph(synthetic(1, 60, fps=200), nodes))
    seqs = seqs_by_stream(runtime.operator("out"))["s0"]  # type: ignore[arg-type]
    dropped = summary["nodes"]["slow"]["dropped_by_reason"]["queue_full_drop_oldest"]
    assert len(seqs) + dropped == 60
    assert dropped > 30
    assert seqs == sorted(seqs)
    assert seqs[-1] == 59  # the newest frame always gets through
    assert summary["streams"]["s0"]["dropped"] == dropped


async def test_drop_newest_keeps_what_is_queued() -> None:
    nodes = """\
  - {id: slow, op: test.slow, inputs: [sources], queue: {size: 3, policy: drop_newest}, config: {delay_ms: 50}}
  - {id: out, op: test.collect, inputs: [slow]}"""
    runtime, summary = await run_graph(graph(synthetic(1, 60, fps=200), nodes))
    seqs = seqs_by_stream(runtime.operator("out"))["s0"]  # type: ignore[arg-type]
    dropped = summary["nodes"]["slow"]["dropped_by_reason"]["queue_full_drop_newest"]
    assert len(seqs) + dropped == 60
    assert seqs[:4] == [0, 1, 2, 3]  # the first frames were queued and kept
    assert 59 not in seqs


async def test_latency_budget_drops_frames_that_cannot_make_it() -> None:
    nodes = """\
  - {id: slow, op: test.slow, inputs: [sources], queue: {size: 100, policy: latency, budget_ms: 60},
     config: {delay_ms: 20}}
  - {id: out, op: test.collect, inputs: [slow]}"""
    runtime, summary = await run_graph(graph(synthetic(1, 100, fps=200), nodes))
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    reasons = summary["nodes"]["slow"]["dropped_by_reason"]
    assert reasons["deadline"] > 20
    assert len(out.items) + reasons["deadline"] == 100
    # what got through was young when taken: budget + one processing time, with slack
    assert summary["streams"]["s0"]["latency_ms"]["p99"] < 60 + 20 + 40


async def test_batches_form_across_streams_within_size_and_delay_bounds() -> None:
    nodes = """\
  - {id: infer, op: test.collect, inputs: [sources], queue: {size: 64}, batch: {max_batch: 4, max_delay_ms: 20},
     config: {delay_ms: 5}}"""
    runtime, summary = await run_graph(graph(synthetic(4, 30, fps=60), nodes))
    op: CollectOperator = runtime.operator("infer")  # type: ignore[assignment]
    sizes = [len(b) for b in op.batches]
    assert max(sizes) == 4
    assert sum(sizes) == 120
    mixed = [b for b in op.batches if len({i.stream_id for i in b}) > 1]
    assert len(mixed) > len(op.batches) // 2  # batches span streams
    assert summary["nodes"]["infer"]["mean_batch"] > 2


async def test_a_lone_frame_waits_no_longer_than_max_delay() -> None:
    nodes = """\
  - {id: infer, op: test.collect, inputs: [sources], batch: {max_batch: 64, max_delay_ms: 30}}"""
    runtime, summary = await run_graph(graph(synthetic(1, 5, fps=5), nodes))
    op: CollectOperator = runtime.operator("infer")  # type: ignore[assignment]
    assert [len(b) for b in op.batches] == [1] * 5
    assert summary["streams"]["s0"]["latency_ms"]["p99"] < 30 + 25


async def test_lifecycle_each_stream_starts_and_ends_once_then_teardown() -> None:
    nodes = """\
  - {id: a, op: test.slow, inputs: [sources], config: {delay_ms: 0}}
  - {id: b, op: test.slow, inputs: [sources], config: {delay_ms: 0}}
  - {id: join, op: test.collect, inputs: [a, b]}"""
    runtime, _ = await run_graph(graph(synthetic(2, 3), nodes))
    calls = runtime.operator("join").calls  # type: ignore[attr-defined]
    assert sorted(c for c in calls if c[0] == "start") == [("start", "s0"), ("start", "s1")]
    assert sorted(c for c in calls if c[0] == "end") == [("end", "s0"), ("end", "s1")]
    assert calls[-1] == ("teardown", "")
    assert len(runtime.operator("join").items) == 12  # type: ignore[attr-defined]


async def test_stop_drains_and_shuts_down_cleanly() -> None:
    nodes = """\
  - {id: work, op: test.slow, inputs: [sources], config: {delay_ms: 1, blocking: true}}
  - {id: out, op: test.collect, inputs: [work]}"""
    runtime = Runtime(plan_from_yaml(graph(synthetic(2, 100_000, fps=100), nodes)), RunOptions())
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    runtime.stop()
    summary = await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    assert ("end", "s0") in out.calls
    assert out.calls[-1] == ("teardown", "")
    for sid in ("s0", "s1"):
        s = summary["streams"][sid]
        assert s["frames_in"] == s["frames_out"] > 10  # everything emitted arrived
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


async def test_max_frames_limits_each_stream() -> None:
    nodes = "  - {id: out, op: test.collect, inputs: [sources]}"
    _, summary = await run_graph(graph(synthetic(3, 100), nodes), max_frames=7)
    assert {s: v["frames_out"] for s, v in summary["streams"].items()} == {"s0": 7, "s1": 7, "s2": 7}


async def test_operator_errors_are_counted_and_the_stream_goes_on() -> None:
    nodes = """\
  - {id: pre, op: preprocess.cpu, inputs: [sources], config: {width: 0}}"""
    with pytest.raises(Exception, match="width"):
        await run_graph(graph(synthetic(1, 3), nodes))
    nodes = """\
  - {id: dec, op: decode.pyav, inputs: [sources]}
  - {id: out, op: test.collect, inputs: [dec]}"""
    _, summary = await run_graph(graph(synthetic(1, 3), nodes))  # frames are not packets
    assert summary["nodes"]["dec"]["dropped_by_reason"] == {"error:TypeError": 3}
    assert summary["nodes"]["dec"]["errors"] == 3


async def test_blocking_work_does_not_stall_the_event_loop() -> None:
    nodes = "  - {id: work, op: test.slow, inputs: [sources], config: {delay_ms: 200, blocking: true}}"
    runtime = Runtime(plan_from_yaml(graph(synthetic(1, 3), nodes)), RunOptions())
    task = asyncio.create_task(runtime.run())
    ticks = 0
    while not task.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await task
    assert ticks > 30  # the loop kept turning while each item slept 200 ms in a thread


def test_frames_carry_their_stream() -> None:
    f = Frame("s", 1, 1, 0, __import__("numpy").zeros((2, 3, 3), "uint8"))
    assert (f.width, f.height) == (3, 2)


async def test_dropped_packets_take_their_dependents_up_to_the_next_keyframe() -> None:
    from engine.frame import Packet
    from engine.metrics import NodeMetrics
    from engine.queues import EdgeQueue, Inbox
    from engine.spec import QueueSpec

    metrics = NodeMetrics("decode")
    q = EdgeQueue("cam", "decode", QueueSpec(size=3, policy="drop_oldest"), Inbox(), metrics)

    def pkt(seq: int) -> Packet:
        return Packet("s", seq, seq, 0, b"", keyframe=seq % 4 == 0)

    for seq in range(6):  # 0K 1 2 3 4K 5: putting 3 drops 0, which takes 1, 2 and 3 with it
        await q.put(pkt(seq))
    kept = []
    while (m := q.pop()) is not None:
        kept.append(m.seq)  # type: ignore[union-attr]
    assert kept == [4, 5]
    assert metrics.dropped == {("s", "queue_full_drop_oldest"): 1, ("s", "awaiting_keyframe"): 3}
    newest = NodeMetrics("decode")
    q2 = EdgeQueue("cam", "decode", QueueSpec(size=2, policy="drop_newest"), Inbox(), newest)
    for seq in range(6):  # 0K 1 queued; 2 dropped (full), so 3 goes too; 4K restarts; 5 finds it full
        await q2.put(pkt(seq))
        if seq == 2:
            q2.pop()
    kept = []
    while (m := q2.pop()) is not None:
        kept.append(m.seq)  # type: ignore[union-attr]
    assert kept == [1, 4]
    assert newest.dropped == {("s", "queue_full_drop_newest"): 2, ("s", "awaiting_keyframe"): 1}  # 2 and 5; 3


async def test_pipelined_batches_keep_per_stream_order() -> None:
    nodes = """\
  - {id: infer, op: test.collect, inputs: [sources], queue: {size: 64}, batch: {max_batch: 3, max_delay_ms: 1},
     workers: 4, config: {delay_ms: 5}}
  - {id: out, op: test.collect, inputs: [infer], queue: {size: 256}}"""
    runtime, _ = await run_graph(graph(synthetic(3, 40), nodes))
    assert seqs_by_stream(runtime.operator("out")) == {f"s{i}": list(range(40)) for i in range(3)}  # type: ignore[arg-type]


@register("test.leaky_failure")
class _LeakyFailure(SlowOperator):
    """Fails every item with an error that quotes a URL and its password (as FFmpeg's do)."""

    async def process(self, item: Item) -> Sequence[Item]:
        raise OSError("Connection refused: 'rtsp://admin:Secret7@10.0.0.5/cam'")


async def test_a_node_failure_is_logged_without_the_password_it_quotes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nodes = "  - {id: work, op: test.leaky_failure, inputs: [sources]}"
    with caplog.at_level("WARNING", logger="framegraph.runtime"):
        _, summary = await run_graph(graph(synthetic(1, 3), nodes))
    logged = [r.getMessage() for r in caplog.records if "node work dropped" in r.getMessage()]
    assert logged
    assert "rtsp://***@10.0.0.5/cam" in logged[0]
    assert not any("Secret7" in r.getMessage() for r in caplog.records)
    assert summary["nodes"]["work"]["dropped_by_reason"] == {"error:OSError": 3}


@register("test.slow_setup")
class _SlowSetup(CollectOperator):
    """test.collect whose setup takes a while (a model loading, a server being reached)."""

    async def setup(self) -> None:
        await asyncio.sleep(0.3)


async def test_a_stream_added_while_the_graph_is_set_up_runs_once_and_reaches_the_sink() -> None:
    """A worker claims its streams while the graph is still being set up: none may be lost or
    read twice (frames read once, every one at the sink)."""
    from dataclasses import replace

    from engine.plan import source_plan

    plan = plan_from_yaml(graph(synthetic(1, 1), "  - {id: out, op: test.slow_setup, inputs: [sources]}"))
    runtime = Runtime(replace(plan, sources=[]), RunOptions(keep_alive=True))
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.05)  # run() is inside the slow setup now
    spec = {"id": "late", "url": "synthetic", "op": "test.synthetic", "config": {"frames": 20}}
    runtime.add_stream(source_plan(spec))
    with pytest.raises(Exception, match="already running"):
        runtime.add_stream(source_plan(spec))  # the pending one counts as running
    for _ in range(200):
        if runtime.metrics.streams.get("late") and runtime.metrics.streams["late"].frames_out == 20:
            break
        await asyncio.sleep(0.02)
    runtime.stop()
    summary = await asyncio.wait_for(task, 10)
    assert summary["streams"]["late"]["frames_in"] == 20  # read once, not twice
    assert summary["streams"]["late"]["frames_out"] == 20  # and every frame reached the sink
    out = runtime.operator("out")
    assert [i.seq for i in out.items if i.stream_id == "late"] == list(range(20))  # type: ignore[attr-defined]


@register("test.end_reason")
class _EndReason(CollectOperator):
    """Records why each stream ended, as the runtime tells `on_stream_end`."""

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self.reasons = {**getattr(self, "reasons", {}), stream_id: self.ctx.end_reasons.get(stream_id)}
        return ()


async def test_on_stream_end_knows_why_the_stream_ended_with_the_password_masked() -> None:
    sources = (
        '  - {id: cam0, url: "rtsp://admin:Secret8@127.0.0.1:9/x", config: {max_reconnects: 0}}\n'
        "  - {id: s1, url: synthetic, op: test.synthetic, config: {frames: 2}}"
    )
    runtime, _ = await run_graph(graph(sources, "  - {id: out, op: test.end_reason, inputs: [sources]}"))
    reasons = runtime.operator("out").reasons  # type: ignore[attr-defined]
    assert reasons["cam0"].startswith(
        "cam0: gave up after 0 reconnects (last: cannot open rtsp://***@127.0.0.1:9/x"
    )
    assert "Secret8" not in reasons["cam0"]
    assert reasons["s1"] == ""  # the source gave no reason
    assert runtime.operator("out").ctx.end_reasons == {}  # only while the hook runs


@register("test.tag")
class TagOperator(SlowOperator):
    """Sets what a preprocess / postprocess would on the frame it gets, named after its node."""

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Frame)
        await asyncio.sleep(0.002 if self.ctx.node_id == "a" else 0)  # the branches interleave
        item.tensor = self.ctx.node_id
        item.meta["by"] = self.ctx.node_id
        item.events.append({"type": "tag", "by": self.ctx.node_id})
        item.degraded.add(self.ctx.node_id)
        return (item,)


async def test_sibling_branches_each_get_a_frame_of_their_own() -> None:
    """A node feeding two branches: what one branch sets on a frame must not show on the other's."""
    nodes = "\n".join(
        [
            "  - {id: a, op: test.tag, inputs: [sources], config: {delay_ms: 0}}",
            "  - {id: b, op: test.tag, inputs: [sources], config: {delay_ms: 0}}",
            "  - {id: out_a, op: test.collect, inputs: [a]}",
            "  - {id: out_b, op: test.collect, inputs: [b]}",
        ]
    )
    runtime, summary = await run_graph(graph(synthetic(2, 30), nodes))
    for branch in ("a", "b"):
        collected: Any = runtime.operator(f"out_{branch}")
        assert len(collected.items) == 60
        for frame in collected.items:
            assert (frame.tensor, frame.meta["by"], frame.degraded) == (branch, branch, {branch})
            assert frame.events == [{"type": "tag", "by": branch}]
    for nid in ("a", "b", "out_a", "out_b"):
        assert summary["nodes"][nid]["queue_wait_ms"]["p50"] >= 0  # each edge times its own wait


async def test_a_third_branch_gets_a_clean_frame_while_a_full_queue_holds_the_second() -> None:
    """Copies made after a put had waited on a full queue took what the first branch had set
    meanwhile: 49 of 50 frames of the third branch carried the first branch's tags."""
    nodes = "\n".join(
        [
            "  - {id: t, op: test.tag, inputs: [sources], config: {delay_ms: 0}}",  # tags at once
            "  - {id: b, op: test.slow, inputs: [{from: sources, queue: {size: 1, policy: block}}],"
            " config: {delay_ms: 2}}",
            "  - {id: c, op: test.collect, inputs: [sources]}",
            "  - {id: out_t, op: test.collect, inputs: [t]}",
            "  - {id: out_b, op: test.collect, inputs: [b]}",
        ]
    )
    runtime, _ = await run_graph(graph(synthetic(1, 50), nodes))
    third: Any = runtime.operator("c")
    assert len(third.items) == 50
    assert [f.seq for f in third.items if f.tensor is not None or f.events or f.meta] == []
