"""A scripted broker for sink.kafka's delivery logic: up, down (refuses), hung (never answers), slow."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Literal

from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from kafka.future import Future

from operators.kafka_publisher import Record

State = Literal["up", "down", "hung"]


class FakeBroker:
    """Acknowledges each producer's sends in order on a 2 ms tick; records what it stored."""

    def __init__(self, ack_delay_s: float = 0.0) -> None:
        self.state: State = "up"
        self.ack_delay_s = ack_delay_s
        self.stored: list[tuple[str, str]] = []  # (key, event_id) in the order the broker took them
        self.topics: dict[str, str] = {}  # event_id: the topic it was stored in (the last one)
        self._pending: deque[tuple[FakeProducer, Future, str, str, str, float]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def connect(self) -> FakeProducer:
        if self.state == "down":
            raise KafkaConnectionError("connection refused")
        if self.state == "hung":
            time.sleep(0.05)
            raise KafkaTimeoutError("bootstrap timed out")
        return FakeProducer(self)

    def take(
        self, producer: FakeProducer, key: bytes, headers: list[tuple[str, bytes]], topic: str = ""
    ) -> Future:
        future = Future()
        event_id = dict(headers)["event_id"].decode()
        with self._lock:
            self._pending.append((producer, future, key.decode(), event_id, topic, time.monotonic()))
        return future

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _tick(self) -> None:
        while not self._stop.wait(0.002):
            done: list[tuple[Future, Exception | None]] = []
            with self._lock:
                while self._pending:
                    producer, future, key, event_id, topic, at = self._pending[0]
                    if producer.closed:
                        done.append((future, KafkaConnectionError("producer closed")))
                    elif self.state == "down":
                        done.append((future, KafkaConnectionError("broker went away")))
                    elif self.state == "hung" or time.monotonic() - at < self.ack_delay_s:
                        break
                    else:
                        self.stored.append((key, event_id))
                        self.topics[event_id] = topic
                        done.append((future, None))
                    self._pending.popleft()
            for future, error in done:
                future.failure(error) if error is not None else future.success(None)


class FakeProducer:
    """The part of KafkaProducer the publisher uses."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.closed = False

    def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> Future:
        if self.broker.state == "down":
            raise KafkaTimeoutError("metadata not available")
        return self.broker.take(self, key, headers, topic)

    def close(self, timeout: float = 0) -> None:
        self.closed = True


def records(n: int, start: int = 0, streams: int = 2) -> list[Record]:
    """Numbered records, round-robin over `streams` keys: event id s<k>-<i>."""
    out = []
    for i in range(start, start + n):
        key = f"s{i % streams}"
        out.append(Record(key.encode(), b'{"n":%d}' % i, f"{key}-{i}", "1.0"))
    return out


def first_seen(stored: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Per key, the event ids in the order they first reached the broker (duplicates dropped)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for key, event_id in stored:
        if event_id not in seen:
            seen.add(event_id)
            out.setdefault(key, []).append(event_id)
    return out


def expected(offered: list[Record]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in offered:
        out.setdefault(r.key.decode(), []).append(r.event_id)
    return out


def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)
