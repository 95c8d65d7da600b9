"""One trace per frame: a root span from capture to the sink, a child span per operator."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.testing import run_graph
from engine.tracing import traceparent

GRAPH = """\
name: traced
sources:
  - {id: s0, url: synthetic, op: test.synthetic, config: {frames: 5, fps: 50}}
  - {id: s1, url: synthetic, op: test.synthetic, config: {frames: 5, fps: 50}}
nodes:
  - {id: work, op: test.slow, inputs: [sources], config: {delay_ms: 20}}
  - {id: batch, op: test.collect, inputs: [work], batch: {max_batch: 2, max_delay_ms: 5}}
  - {id: events, op: sink.jsonl, inputs: [batch], config: {path: ev.jsonl, flush_interval_s: 0}}
"""


async def test_span_tree_has_every_operator_in_order_and_the_event_latency(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    _, summary = await run_graph(GRAPH, output_dir=tmp_path, span_exporter=exporter)
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "frame"]
    assert len(roots) == 10  # every frame of both streams
    records = {
        (r["stream_id"], r["seq"]): r
        for r in map(json.loads, (tmp_path / "ev.jsonl").read_text().splitlines())
    }
    for root in roots:
        children = sorted(
            (s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
            key=lambda s: s.start_time,
        )
        assert [c.name for c in children] == ["work", "batch", "events"]
        assert all(c.context.trace_id == root.context.trace_id for c in children)
        work = children[0]
        assert work.attributes["framegraph.work_ms"] >= 19  # the 20 ms the operator slept
        assert root.start_time <= children[0].start_time
        assert children[-1].end_time <= root.end_time
        key = (root.attributes["framegraph.stream_id"], root.attributes["framegraph.seq"])
        duration_ms = (root.end_time - root.start_time) / 1e6
        assert abs(duration_ms - records[key]["latency_ms"]) < 5  # the event tells the trace's latency
        assert records[key]["trace_id"] == f"{root.context.trace_id:032x}"
    stages = summary["nodes"]["work"]
    assert stages["work_ms"]["p50"] >= 19
    assert set(stages["queue_wait_ms"]) == {"p50", "p95", "p99"}


async def test_untraced_runs_make_no_spans_but_still_time_stages(tmp_path: Path) -> None:
    runtime, summary = await run_graph(GRAPH, output_dir=tmp_path)
    assert runtime.tracer is None
    assert summary["nodes"]["work"]["work_ms"]["p50"] >= 19
    assert traceparent(runtime.operator("batch").items[0]) is None  # type: ignore[attr-defined]
