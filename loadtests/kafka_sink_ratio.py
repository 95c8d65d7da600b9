"""Events per second sink.kafka sustains versus a bare kafka-python producer loop, same run.

    scripts/services start kafka
    python loadtests/kafka_sink_ratio.py [--bootstrap 127.0.0.1:19092] [--events 20000] [--rounds 3]

Each round sends the same kind of messages both ways, alternating, to a fresh topic:
- bare: a loop of `KafkaProducer.send` over prebuilt messages (the events of the frames: key,
  value, headers), then `flush()`; the producer has sink.kafka's own options (acks=all, one
  request in flight, idempotence, linger 5 ms), so the difference is the sink's work;
- sink: `KafkaSink.process` over the frames (3 detections each, one summary event per frame)
  as the runtime calls it, until every event is acknowledged: event building, buffering,
  the delivery thread, acknowledgement tracking. The frames come as fast as the sink takes
  them without spooling (the feed pauses while half the buffer is held): a sustained rate;
- graph (once): the same frames from `test.synthetic` through a whole graph into sink.kafka.
The ratio is the median sink rate over the median bare rate (goal >= 0.8). Prints JSON and
writes it to out/loadtests/kafka_sink_ratio.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from engine.events import SCHEMA_VERSION, dumps, frame_events
from engine.frame import Detections, Frame, now_ns
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from engine.testing import run_graph
from operators.kafka_sink import KafkaSink, KafkaSinkConfig, producer_options

ROOT = Path(__file__).resolve().parents[1]


def make_frames(n: int, streams: int = 4) -> list[Frame]:
    image = np.zeros((720, 1280, 3), np.uint8)
    boxes = np.array([[100, 120, 180, 230], [400, 80, 470, 170], [900, 300, 990, 420]], np.float32)
    frames = []
    for i in range(n):
        det = Detections(boxes + i % 7, np.array([0.91, 0.82, 0.77], np.float32), np.zeros(3, np.int64))
        frames.append(Frame(f"cam{i % streams}", i // streams, i, now_ns(), image, detections=det))
    return frames


def bare_rate(bootstrap: str, topic: str, frames: list[Frame]) -> float:
    options = producer_options(KafkaSinkConfig(bootstrap=bootstrap, topic=topic))
    messages = []
    for frame in frames:
        for e in frame_events(frame, "bench"):
            headers = [("event_id", e["event_id"].encode()), ("schema_version", SCHEMA_VERSION.encode())]
            messages.append((e["stream_id"].encode(), dumps(e), headers))
    producer = KafkaProducer(**options)
    producer.send(topic, b"warm-up").get(timeout=10)
    started = time.perf_counter()
    for key, value, headers in messages:
        producer.send(topic, value=value, key=key, headers=headers)
    producer.flush()
    rate = len(messages) / (time.perf_counter() - started)
    producer.close()
    return rate


async def sink_rate(
    bootstrap: str, topic: str, frames: list[Frame], spool_dir: str
) -> tuple[float, dict[str, int]]:
    config = KafkaSinkConfig(bootstrap=bootstrap, topic=topic, spool_dir=spool_dir, health_events=False)
    metrics = NodeMetrics("kafka")
    sink = KafkaSink(config, OperatorContext("kafka", metrics, graph_name="bench"))
    await sink.setup()
    publisher = sink._publisher
    assert publisher is not None
    while metrics.events["sent"] == 0:  # connected: the warm-up is not timed
        await sink.process(frames[0])
        await asyncio.sleep(0.05)
    before = metrics.events["accepted"]
    started = time.perf_counter()
    for frame in frames:
        await sink.process(frame)
        while publisher.held > config.buffer_events // 2:  # noqa: ASYNC110 (a source at the sink's rate)
            await asyncio.sleep(0.001)
    while not publisher.idle():  # noqa: ASYNC110 (polling the delivery thread)
        await asyncio.sleep(0.002)
    rate = (metrics.events["accepted"] - before) / (time.perf_counter() - started)
    await sink.teardown()
    return rate, dict(metrics.events)


async def graph_rate(bootstrap: str, topic: str, n: int, spool_dir: str) -> float:
    graph = f"""
name: bench
sources:
  - {{id: cam0, url: synthetic, op: test.synthetic, config: {{frames: {n}, width: 64, height: 36}}}}
nodes:
  - id: kafka
    op: sink.kafka
    inputs: [sources]
    config: {{bootstrap: "{bootstrap}", topic: {topic}, spool_dir: "{spool_dir}", health_events: false}}
"""
    started = time.perf_counter()
    _, summary = await run_graph(graph)
    events = summary["nodes"]["kafka"]["events"]
    assert events["failed"] == 0, events
    assert events["sent"] + events["replayed"] >= n, events
    return n / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=os.environ.get("FG_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "out/loadtests/kafka_sink_ratio.json")
    args = p.parse_args()
    frames = make_frames(args.events)
    run = uuid.uuid4().hex[:8]
    bare, sink = [], []
    counters: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as spool_dir:
        for r in range(args.rounds):
            bare.append(bare_rate(args.bootstrap, f"bench-{run}-bare-{r}", frames))
            topic = f"bench-{run}-sink-{r}"
            rate, counters = asyncio.run(sink_rate(args.bootstrap, topic, frames, spool_dir))
            sink.append(rate)
        graph = asyncio.run(graph_rate(args.bootstrap, f"bench-{run}-graph", args.events, spool_dir))
    result: dict[str, Any] = {
        "events_per_round": args.events,
        "rounds": args.rounds,
        "bare_events_per_s": [round(x) for x in bare],
        "sink_events_per_s": [round(x) for x in sink],
        "ratio": round(statistics.median(sink) / statistics.median(bare), 3),
        "graph_events_per_s": round(graph),
        "sink_counters_last_round": counters,
        "producer": "kafka-python, acks=all, max_in_flight 1, idempotence auto, linger 5 ms, batch 256 KiB",
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
