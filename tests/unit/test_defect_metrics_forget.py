"""Metrics.forget_stream: a removed stream's per-stream state is freed, the run's totals are kept."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from dataclasses import replace
from typing import Any

from engine.metrics import Metrics
from engine.plan import source_plan
from engine.runtime import RunOptions, Runtime
from engine.testing import plan_from_yaml

GRAPH_NODES = ("decode", "detect", "sink")
FRAMES = 600


def churn(m: Metrics, first: int, count: int, check_totals: bool = False) -> None:
    """Streams cam{first}.. come, run FRAMES frames with drops and events, and are removed."""
    for i in range(first, first + count):
        sid = f"cam{i}"
        m.node(sid).events["disconnects"] += 1  # the stream's source (named after it)
        m.node(sid).errors += 1
        s = m.stream(sid)
        s.frames_in += FRAMES
        for k in range(FRAMES):
            s.finished(float(k % 50))
        m.node("decode").drop(sid, "corrupt_frame", 2)
        m.node("sink").drop(sid, "unredacted")
        before = m.summary("g") if check_totals else None
        m.forget_stream(sid, keep_nodes=GRAPH_NODES)
        if before is not None:
            after = m.summary("g")
            assert after["frames_out"] == before["frames_out"]
            for nid in GRAPH_NODES:
                b, a = before["nodes"][nid], after["nodes"][nid]
                assert (a["dropped"], a["dropped_by_reason"]) == (b["dropped"], b["dropped_by_reason"])
                assert sid not in a["dropped_by_stream"]


def tracked_keys(m: Metrics) -> tuple[int, int, int]:
    """Stream entries, node entries and per-stream drop counters the metrics hold."""
    return len(m.streams), len(m.nodes), sum(len(n.dropped) for n in m.nodes.values())


def test_forgetting_200_streams_frees_their_state_and_keeps_the_totals() -> None:
    m = Metrics()
    for nid in GRAPH_NODES:
        m.node(nid).items_in += 1
    baseline = tracked_keys(m)
    churn(m, 0, 200, check_totals=True)
    assert tracked_keys(m) == baseline
    assert set(m.nodes) == set(GRAPH_NODES)
    summary = m.summary("g")
    assert summary["streams"] == {}
    assert summary["frames_out"] == 200 * FRAMES
    assert summary["latency_ms"]["p50"] is not None
    assert summary["nodes"]["decode"]["dropped"] == 400
    assert summary["nodes"]["decode"]["dropped_by_reason"] == {"corrupt_frame": 400}
    assert summary["nodes"]["decode"]["dropped_by_stream"] == {}
    assert summary["nodes"]["sink"]["dropped_by_reason"] == {"unredacted": 200}
    assert summary["removed_streams"] == {
        "streams": 200,
        "frames_in": 200 * FRAMES,
        "frames_out": 200 * FRAMES,
        "dropped": 600,
        "source_errors": 200,
        "source_events": {"disconnects": 200},
    }


def test_memory_stays_flat_while_streams_come_and_go() -> None:
    m = Metrics()
    for nid in GRAPH_NODES:
        m.node(nid)
    tracemalloc.start()
    try:
        churn(m, 0, 100)  # fills the removed streams' bounded latency reservoir (50,000 samples)
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        churn(m, 100, 200)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    # kept, these 200 streams would hold ~5 MB (latency samples, recent values, source metrics)
    assert grown < 256 * 1024, grown


def test_a_stream_added_again_or_late_frames_start_from_zero_and_add_to_the_totals() -> None:
    m = Metrics()
    m.node("sink")
    s = m.stream("cam0")
    s.frames_in = s.frames_out = 10
    m.forget_stream("cam0")
    m.stream("cam0").finished(5.0)  # a frame still in flight when the stream was removed
    m.node("sink").drop("cam0", "late")
    assert m.streams["cam0"].frames_out == 1
    summary = m.summary("g")
    assert summary["frames_out"] == 11
    assert summary["streams"]["cam0"]["dropped"] == 1
    assert summary["nodes"]["sink"]["dropped_by_stream"] == {"cam0": {"late": 1}}
    m.forget_stream("cam0")
    m.forget_stream("cam0")  # nothing left: no-op
    assert tracked_keys(m) == (0, 1, 0)
    assert m.summary("g")["removed_streams"]["streams"] == 2
    assert m.summary("g")["frames_out"] == 11


def test_a_stream_named_like_a_graph_node_leaves_the_node_in_place() -> None:
    m = Metrics()
    node = m.node("decode")
    node.items_in = 7
    node.drop("decode", "corrupt_frame")
    node.drop("cam1", "corrupt_frame")
    m.stream("decode").frames_out = 3
    m.forget_stream("decode", keep_nodes={"decode"})
    assert m.nodes["decode"] is node
    assert node.to_dict()["dropped_by_stream"] == {"cam1": {"corrupt_frame": 1}}
    assert node.to_dict()["dropped"] == 2
    assert "decode" not in m.streams


def test_summary_of_a_run_without_removals_is_unchanged() -> None:
    m = Metrics()
    m.stream("cam0").finished(1.0)
    assert "removed_streams" not in m.summary("g")


GRAPH = """\
name: churn
sources:
  - {id: unused, url: none, op: test.synthetic}
nodes:
  - {id: slow, op: test.slow, inputs: [sources], config: {delay_ms: 2}}
  - {id: out, op: test.collect, inputs: [slow]}
"""


async def test_a_worker_runtime_with_streams_coming_and_going_returns_to_baseline() -> None:
    runtime = Runtime(replace(plan_from_yaml(GRAPH), sources=[]), RunOptions(keep_alive=True))
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.1)
    baseline = tracked_keys(runtime.metrics)
    spec: dict[str, Any] = {"url": "none", "op": "test.synthetic", "config": {"frames": 10_000, "fps": 500}}
    for i in range(6):
        runtime.add_stream(source_plan({**spec, "id": f"cam{i % 3}"}))
        await asyncio.sleep(0.1)
        await runtime.remove_stream(f"cam{i % 3}")  # frames are still in flight through `slow`
    for _ in range(100):
        if tracked_keys(runtime.metrics) == baseline:
            break
        await asyncio.sleep(0.02)
    assert tracked_keys(runtime.metrics) == baseline
    runtime.stop()
    summary = await asyncio.wait_for(task, timeout=30)
    out = runtime.operator("out").items  # type: ignore[attr-defined]
    assert summary["frames_out"] == len(out) > 0
    assert summary["removed_streams"]["frames_in"] == summary["nodes"]["slow"]["in"]
