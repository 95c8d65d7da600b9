"""Reads the run's events back with a kafka-python consumer group, in a process of its own.

A process of its own: the ids it keeps (to count each event once) must not show up in the
engine's RSS, which the soak measures. Counts are consumed messages, never end offsets
(tansu's ListOffsets is unreliable after batched produces: shared docs, services.md).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections import Counter
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def create_topic(bootstrap: str, topic: str) -> bool:
    """Create the topic with one partition (before the producer auto-creates it); False if it exists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()


def _consume(
    log_path: str,
    bootstrap: str,
    topic: str,
    group: str,
    stop: MpEvent,
    unique: Synchronized[int],
    total: Synchronized[int],
    results: mp.Queue[dict[str, Any]],
) -> None:
    logging.basicConfig(
        filename=log_path, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,  # tansu: a join waits about half of it (services.md)
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=100,
        metadata_max_age_ms=1000,  # a restarted broker recreates the topic: see its partitions soon
    )
    seen: set[str] = set()
    by_type: Counter[str] = Counter()
    by_stream: Counter[str] = Counter()
    errors: list[str] = []
    joined_s: float | None = None
    started = time.monotonic()
    while not stop.is_set():
        try:
            batches = consumer.poll(timeout_ms=200)
        except Exception as e:  # the broker is down or restarting: keep reading after it
            if len(errors) < 20:
                errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.2)
            continue
        if joined_s is None and consumer.assignment():
            joined_s = time.monotonic() - started
        for records in batches.values():
            for m in records:
                total.value += 1
                event = json.loads(m.value)
                if event["event_id"] not in seen:
                    seen.add(event["event_id"])
                    by_type[event["type"]] += 1
                    by_stream[event["stream_id"]] += 1
            unique.value = len(seen)
    consumer.close()
    results.put(
        {
            "consumed": total.value,
            "unique": len(seen),
            "duplicates": total.value - len(seen),
            "by_type": dict(by_type),
            "by_stream": dict(by_stream),
            "errors": errors,
            "joined_s": None if joined_s is None else round(joined_s, 2),
        }
    )


class EventReader:
    """A consumer-group member in a child process; `unique` is readable at any time."""

    def __init__(self, bootstrap: str, topic: str, group: str, log_path: Path) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._unique: Synchronized[int] = ctx.Value("q", 0)
        self._total: Synchronized[int] = ctx.Value("q", 0)
        self._results: mp.Queue[dict[str, Any]] = ctx.Queue()
        self._proc = ctx.Process(
            target=_consume,
            args=(
                str(log_path),
                bootstrap,
                topic,
                group,
                self._stop,
                self._unique,
                self._total,
                self._results,
            ),
            name="event-reader",
            daemon=True,
        )
        self._proc.start()

    @property
    def unique(self) -> int:
        """Distinct events (by event_id) consumed so far."""
        return int(self._unique.value)

    def wait_for(self, n: int, timeout_s: float) -> bool:
        """Block until `n` distinct events were consumed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.unique < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self) -> dict[str, Any]:
        """Stop reading; what was consumed."""
        self._stop.set()
        try:
            out = self._results.get(timeout=30)
        finally:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        return out
