"""sink.kafka against a real broker (tansu), read by a kafka-python consumer group throughout.

Delivery with order and trace headers; a broker hung for 30 s; a broker killed and started
again (it keeps nothing); the engine killed while events are spooled, then restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import Field

from engine.childproc import TansuBroker
from engine.events import SCHEMA_VERSION
from engine.frame import Control, ControlKind, Frame, StreamInfo, now_ns
from engine.plan import load_plan
from engine.registry import Emit, Source, register
from engine.runtime import RunOptions, Runtime
from engine.samples import make_clip
from engine.spec import StrictModel
from engine.testing import plan_from_yaml
from tests.integration.kafka_support import (
    ROOT,
    EventConsumer,
    check_no_loss_no_reorder,
    first_occurrences,
    shared_bootstrap,
    tansu_binary,
)

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Short timeouts, so that the tests notice an outage in seconds.
FAST = "buffer_events: 200, stall_timeout_s: 2, request_timeout_s: 3, delivery_timeout_s: 8, connect_timeout_s: 2, drain_timeout_s: 60"


@pytest.fixture(scope="module")
def kafka_bootstrap() -> str:
    return shared_bootstrap()


@pytest.fixture
def broker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[TansuBroker]:
    """A private broker this test may hang or kill without disturbing anyone else's."""
    b = TansuBroker(tansu_binary(), tmp_path / "tansu.log")
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def topic() -> str:
    return f"framegraph.test.{uuid.uuid4().hex[:10]}"


class GatedConfig(StrictModel):
    frames: int = Field(ge=0)
    fps: float = Field(gt=0)
    pause_at: int = Field(ge=0, description="Wait for the test's gate before this frame.")


GATES: dict[str, asyncio.Event] = {}


@register("test.gated")
class GatedSource(Source[GatedConfig]):
    """test.synthetic with a pause the test lifts (GATES[stream id])."""

    Config = GatedConfig

    async def run(self, emit: Emit) -> None:
        cfg, sid = self.config, self.ctx.stream_id
        await emit(Control(ControlKind.START, sid, StreamInfo(sid, width=8, height=8)))
        for seq in range(cfg.frames):
            if seq == cfg.pause_at:
                await GATES[sid].wait()
            await asyncio.sleep(1 / cfg.fps)
            await emit(Frame(sid, seq, seq, now_ns(), np.zeros((8, 8, 3), np.uint8)))
        await emit(Control(ControlKind.END, sid))


def graph(bootstrap: str, topic: str, sources: str, sink: str = "", tmp: Path | None = None) -> str:
    spool = f', spool_dir: "{tmp / "spool"}"' if tmp else ""
    return f"""
name: kafka_test
sources:
{sources}
nodes:
  - id: out
    op: sink.kafka
    inputs: [sources]
    config: {{bootstrap: "{bootstrap}", topic: {topic}{spool}, {sink or "buffer_events: 200"}}}
"""


def synthetic(streams: int, frames: int, fps: float) -> str:
    return "\n".join(
        f"  - {{id: s{i}, url: synthetic, op: test.synthetic, config: {{frames: {frames}, fps: {fps}}}}}"
        for i in range(streams)
    )


async def test_every_produced_event_is_consumed_in_order_with_trace_headers(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    consumer = EventConsumer(kafka_bootstrap, topic)
    exporter = InMemorySpanExporter()
    runtime = Runtime(
        plan_from_yaml(graph(kafka_bootstrap, topic, synthetic(3, 100, 0), "buffer_events: 10000", tmp_path)),
        RunOptions(output_dir=tmp_path, span_exporter=exporter),
    )
    try:
        summary = await runtime.run()
        counters = summary["nodes"]["out"]["events"]
        assert counters["accepted"] == 3 * 102  # a summary per frame, connected, ended
        assert counters["spooled"] == 0  # the buffer held them all: each frame's delivery is traced
        consumed = await asyncio.to_thread(consumer.wait_for, counters["accepted"])
    finally:
        consumer.close()
    assert len(consumed) == counters["accepted"]
    check_no_loss_no_reorder(consumer, {f"s{i}": 100 for i in range(3)})
    schema = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas/events/v1.json").read_text()))
    traced = 0
    for m in consumed.values():
        schema.validate(m.value)
        assert m.headers["schema_version"] == m.value["schema_version"] == SCHEMA_VERSION
        parent = m.headers.get("traceparent")
        if m.value["trace_id"] is None:
            assert parent is None or TRACEPARENT.fullmatch(parent)  # untraced: absent (or valid)
        else:
            match = TRACEPARENT.fullmatch(parent or "")
            assert match, f"traced event without a valid traceparent: {parent!r}"
            assert match.group(1) == m.value["trace_id"]
            traced += 1
    assert traced == 300  # every frame was traced (span_exporter), so every summary carries its trace
    deliveries = [s for s in exporter.get_finished_spans() if s.name == "kafka.delivery"]
    roots = {s.context.span_id for s in exporter.get_finished_spans() if s.name == "frame"}
    assert len(deliveries) == 300
    assert all(s.parent is not None and s.parent.span_id in roots for s in deliveries)


async def test_broker_hung_30s_loses_nothing_and_frames_keep_flowing(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    fps, frames = 25, 25 * 38  # per stream; the hang is from t=3 s to t=33 s
    consumer = EventConsumer(broker.bootstrap, topic)
    runtime = Runtime(
        plan_from_yaml(graph(broker.bootstrap, topic, synthetic(2, frames, fps), FAST, tmp_path)),
        RunOptions(output_dir=tmp_path),
    )
    counters = runtime.metrics.node("out").events
    task = asyncio.create_task(runtime.run())
    try:
        await asyncio.sleep(3)
        broker.pause()
        hung_at = counters["accepted"]
        await asyncio.sleep(30)
        during = counters["accepted"] - hung_at
        spooled = counters["spooled"]
        broker.resume()
        summary = await asyncio.wait_for(task, timeout=120)
        await asyncio.to_thread(consumer.wait_for, summary["nodes"]["out"]["events"]["accepted"])
    finally:
        broker.resume()
        consumer.close()
    assert during >= 0.9 * 30 * fps * 2  # the graph never waited on the hung broker
    assert spooled > 0
    events = summary["nodes"]["out"]["events"]
    assert events["replayed"] >= spooled
    check_no_loss_no_reorder(consumer, {"s0": frames, "s1": frames})


async def test_broker_killed_and_restarted_empty_loses_nothing(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    sources = "\n".join(
        f"  - {{id: g{i}, url: gated, op: test.gated, config: {{frames: 160, fps: 80, pause_at: 60}}}}"
        for i in range(2)
    )
    GATES.update({"g0": asyncio.Event(), "g1": asyncio.Event()})
    consumer = EventConsumer(broker.bootstrap, topic)
    runtime = Runtime(
        plan_from_yaml(graph(broker.bootstrap, topic, sources, FAST, tmp_path)),
        RunOptions(output_dir=tmp_path),
    )
    counters = runtime.metrics.node("out").events
    task = asyncio.create_task(runtime.run())
    try:
        # The broker keeps nothing across a restart: the consumer reads all it acknowledged first.
        deadline = time.monotonic() + 60
        while counters["accepted"] < 2 * 61 or len(consumer.unique()) < counters["accepted"]:
            assert time.monotonic() < deadline, "the first 60 frames were not consumed"
            await asyncio.sleep(0.1)
        broker.kill()
        for gate in GATES.values():
            gate.set()  # 100 more frames a stream while no broker runs
        deadline = time.monotonic() + 20
        while counters["spooled"] == 0:  # the sink notices the outage (stall_timeout_s)
            assert time.monotonic() < deadline, "nothing was spooled while the broker was down"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # more frames while it is down
        consumer.epoch = 1
        broker.start()
        summary = await asyncio.wait_for(task, timeout=120)
        await asyncio.to_thread(consumer.wait_for, summary["nodes"]["out"]["events"]["accepted"])
    finally:
        consumer.close()
        GATES.clear()
    assert summary["nodes"]["out"]["events"]["replayed"] > 0
    check_no_loss_no_reorder(consumer, {"g0": 160, "g1": 160})


def crash_graph(tmp_path: Path, bootstrap: str, topic: str) -> Path:
    clip = make_clip(tmp_path / "clip.mp4", 160, 96, fps=30, seconds=1)
    path = tmp_path / "crash.yaml"
    path.write_text(f"""
name: crash
sources:
  - {{id: cam0, url: "{clip}", config: {{loop: true, realtime: true}}}}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - id: out
    op: sink.kafka
    inputs: [decode]
    config: {{bootstrap: "{bootstrap}", topic: {topic}, spool_dir: "{tmp_path / "spool"}", {FAST}}}
""")
    return path


def framegraph(log: Path, *args: Any) -> subprocess.Popen[bytes]:
    """`framegraph run ...` in a process of its own, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", *map(str, args)], cwd=ROOT, stdout=out, stderr=out
        )


def spooled_events(spool: Path) -> list[dict[str, Any]]:
    sidecar = spool.parent / (spool.name + ".committed")
    offset = int(sidecar.read_text() or 0) if sidecar.exists() else 0
    tail = spool.read_bytes()[offset:]
    return [json.loads(line)["v"] for line in tail.splitlines()]


def test_engine_killed_while_spooling_replays_the_spool_after_restart(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    broker.kill()  # the broker is down for the whole first run
    graph_file = crash_graph(tmp_path, broker.bootstrap, topic)
    spool = tmp_path / "spool" / "crash.out.jsonl"
    first = framegraph(tmp_path / "run1.log", graph_file, "--output", tmp_path / "out1")
    deadline = time.monotonic() + 60
    while not spool.exists() or len(spool.read_bytes().splitlines()) < 40:
        assert first.poll() is None, (tmp_path / "run1.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "nothing was spooled"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    held = spooled_events(spool)
    seqs = [e["seq"] for e in held if e["type"] == "detections"]
    assert held[0]["status"] == "connected"
    assert seqs == list(range(len(seqs)))  # everything up to the kill is in the spool, in order

    broker.start()
    consumer = EventConsumer(broker.bootstrap, topic)
    try:
        run2 = ("--output", tmp_path / "out2", "--max-frames", "10", "--summary-json", tmp_path / "s.json")
        second = framegraph(tmp_path / "run2.log", graph_file, *run2)
        assert second.wait(timeout=120) == 0, (tmp_path / "run2.log").read_text()[-2000:]
        counters = json.loads((tmp_path / "s.json").read_text())["nodes"]["out"]["events"]
        assert counters["accepted"] == 12  # the second run: 10 frames, connected, ended
        assert counters["replayed"] >= len(held)
        consumer.wait_for(len(held) + 12, timeout_s=60)
    finally:
        consumer.close()
    order = [m.value["event_id"] for m in first_occurrences(consumer.messages)["cam0"]]
    assert order[: len(held)] == [e["event_id"] for e in held]  # the spool first, in order
    assert len(order) == len(held) + 12
    assert spool.stat().st_size == 0  # compacted once all was acknowledged


def test_sasl_password_never_reaches_logs_errors_or_files(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    graph_file = tmp_path / "sasl.yaml"
    graph_file.write_text(f"""
name: sasl
sources: [{{id: s0, url: synthetic, op: test.synthetic, config: {{frames: 5}}}}]
nodes:
  - id: out
    op: sink.kafka
    inputs: [sources]
    config:
      bootstrap: "{kafka_bootstrap}"
      topic: {topic}
      security_protocol: SASL_PLAINTEXT
      sasl_mechanism: SCRAM-SHA-256
      sasl_username: framegraph
      sasl_password: "${{env:FG_TEST_KAFKA_PASSWORD}}"
      connect_timeout_s: 1
      drain_timeout_s: 1
""")
    script = (
        "import sys, engine.testing, engine.cli; sys.exit(engine.cli.main(sys.argv[1:]))"  # test.synthetic
    )
    args = [
        sys.executable,
        "-c",
        script,
        "run",
        graph_file,
        "--output",
        tmp_path / "out",
        "--log-level",
        "DEBUG",
    ]
    env = {**os.environ, "FG_TEST_KAFKA_PASSWORD": secret}
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kafka:" in result.stderr  # the sink did log its trouble with the broker...
    assert secret not in result.stdout + result.stderr  # ...without the password
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != graph_file:
            assert secret.encode() not in path.read_bytes(), path


async def test_shipped_detect_track_publish_graph(
    triton_url: str, kafka_bootstrap: str, clip_720p: Path, topic: str, tmp_path: Path
) -> None:
    overrides = [
        f"sources.0.url={clip_720p}",
        f"nodes.detect.config.url={triton_url}",
        f"nodes.publish.config.bootstrap={kafka_bootstrap}",
        f"nodes.publish.config.topic={topic}",
    ]
    plan = load_plan(ROOT / "graphs/detect_track_publish.yaml", overrides)
    consumer = EventConsumer(kafka_bootstrap, topic)
    try:
        summary = await Runtime(plan, RunOptions(output_dir=tmp_path)).run()
        counters = summary["nodes"]["publish"]["events"]
        consumed = await asyncio.to_thread(consumer.wait_for, counters["accepted"])
    finally:
        consumer.close()
    schema = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas/events/v1.json").read_text()))
    for m in consumed.values():
        schema.validate(m.value)
    kinds = Counter(m.value["type"] for m in consumed.values())
    print(f"\nshipped graph, 2 s clip: {dict(kinds)}; sink {counters}")
    assert kinds["detections"] == 60  # a summary per frame
    assert kinds["track.start"] >= 1
    assert kinds["track.end"] == kinds["track.start"]  # the held last frame closes every track
    assert kinds["zone.enter"] >= 1  # the face moves across the frame: into the left half...
    assert kinds["zone.leave"] == kinds["zone.enter"]  # ...and every track leaves when it ends
    assert kinds["line.cross"] >= 1  # ...over the middle line
    tracked = [d for m in consumed.values() if m.value["type"] == "detections" for d in m.value["detections"]]
    assert sum(d.get("track_id", -1) >= 0 for d in tracked) >= 50


async def test_spooled_events_land_in_their_own_topic_after_a_restart_with_another(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    broker.kill()  # down for the whole first run: its 12 events stay spooled for `topic`
    first = Runtime(
        plan_from_yaml(
            graph(broker.bootstrap, topic, synthetic(1, 10, 100), FAST.replace("60", "0"), tmp_path)
        ),
        RunOptions(output_dir=tmp_path),
    )
    await first.run()
    assert first.metrics.node("out").events["spooled"] == 12
    broker.start()
    moved = topic + ".moved"
    old, new = EventConsumer(broker.bootstrap, topic), EventConsumer(broker.bootstrap, moved)
    try:
        second = Runtime(
            plan_from_yaml(graph(broker.bootstrap, moved, synthetic(1, 10, 100), FAST, tmp_path)),
            RunOptions(output_dir=tmp_path),
        )
        await second.run()
        assert second.metrics.node("out").events["replayed"] >= 12
        assert len(old.wait_for(12)) == 12  # the spooled events went where they were meant to go
        assert len(new.wait_for(12)) == 12  # the second run's own events: the new topic
        await asyncio.sleep(1)
        assert len(old.unique()) == 12
        assert len(new.unique()) == 12
    finally:
        old.close()
        new.close()


async def test_a_camera_that_goes_away_is_reported_while_it_is_away(
    kafka_bootstrap: str, topic: str, tmp_path: Path, clip_720p: Path
) -> None:
    """stream.health says `reconnecting` (with why) while the camera is down, `connected` when it is
    back, then `ended`: a real RTSP server killed and started again, a real broker, a real consumer."""
    from tests.integration.conftest import RtspServer

    media = tmp_path / "media"
    media.mkdir()
    (media / "astro.mp4").write_bytes(clip_720p.read_bytes())
    camera = RtspServer(media)
    camera.start()
    url = camera.url("astro").replace("rtsp://", "rtsp://viewer:s3cret@")
    rtsp = "{read_timeout_s: 1, open_timeout_s: 2, backoff_initial_s: 0.2, backoff_max_s: 0.5}"
    sources = f'  - {{id: cam0, url: "{url}", config: {rtsp}}}'
    consumer = EventConsumer(kafka_bootstrap, topic)
    runtime = Runtime(
        plan_from_yaml(graph(kafka_bootstrap, topic, sources, FAST)), RunOptions(output_dir=tmp_path)
    )
    task = asyncio.create_task(runtime.run())

    async def health(n: int, timeout_s: float = 30) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = sorted(consumer.unique().values(), key=lambda m: m.offset)
            statuses = [(m.value["status"], m.value["reason"]) for m in got]
            if len(statuses) >= n:
                return statuses
            assert time.monotonic() < deadline, f"health events so far: {statuses}"
            await asyncio.sleep(0.1)

    try:
        assert await health(1) == [("connected", "")]
        camera.kill()
        down = await health(2)
        assert camera.proc is None or camera.proc.poll() is not None  # said while the camera is away
        assert down[1][0] == "reconnecting"
        assert down[1][1].startswith("cam0: "), down[1]
        camera.start()
        back = await health(3)
        assert back[2] == ("connected", "reconnected")
        runtime.stop()
        await asyncio.wait_for(task, timeout=30)
        final = await health(4)
    finally:
        runtime.stop()
        camera.kill()
        consumer.close()
    assert final[3] == ("ended", "stopped")
    assert len(final) == 4  # one `reconnecting` per outage, not one per retry
    assert "s3cret" not in json.dumps([m.value for m in consumer.messages])
