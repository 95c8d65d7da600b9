"""Delivery for sink.kafka: a bounded in-memory buffer, the spool, replay in order, acks per record.

All producer calls run in one thread of the publisher's own, never on the event loop. The
records of the graph form one ordered queue:

    in flight from memory  <  memory buffer  <  spool (from its committed offset)

While the broker keeps up, records go from memory to the producer. When the buffer is full, a
send fails, no acknowledgement comes for `stall_timeout_s`, or no broker answers, the buffer
moves to the spool and new records are appended behind it; records that were in flight and
not acknowledged are put at the spool's head. The spool is then replayed in order, and once
every record in it is acknowledged it is compacted and memory is used again. Delivery is
at least once: a record may reach the broker twice (with the same event id), never not at all.

Each record carries the topic it was published for, in memory and in the spool, and goes to that
topic even when it is replayed after a restart with another `topic` in the config: events land
where they were meant to go (a changed topic applies to new events only; the publisher logs once
per topic that spooled events still go to another one). Spool lines written before the topic was
recorded (four meta fields) go to the configured topic, and the publisher says so once in a
log line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from operators.kafka_spool import Spool

log = logging.getLogger("framegraph.kafka")


@dataclass(slots=True)
class Record:
    """One message: key (the stream id), value (the event's JSON) and what its headers carry."""

    key: bytes
    value: bytes
    event_id: str
    schema_version: str
    traceparent: str | None = None
    span: Any = None  # in memory only: the frame's root span, for a delivery span
    offered_ns: int = 0
    topic: str | None = None  # the topic it is meant for; None: the publisher's (stamped on offer)

    def headers(self) -> list[tuple[str, bytes]]:
        out = [("event_id", self.event_id.encode()), ("schema_version", self.schema_version.encode())]
        if self.traceparent:
            out.append(("traceparent", self.traceparent.encode()))
        return out

    def to_line(self) -> bytes:
        """The spool line: {"m": [key, event_id, schema_version, traceparent, topic], "v": <the value>}."""
        meta = json.dumps(
            [self.key.decode(), self.event_id, self.schema_version, self.traceparent, self.topic]
        )
        return b'{"m":' + meta.encode() + b',"v":' + self.value + b"}\n"

    @classmethod
    def from_line(cls, line: bytes) -> Record:
        """A spool line back as a record; a line of an older spool (no topic) has topic None."""
        split = line.index(b',"v":')  # the first one: quotes inside the meta strings are escaped
        key, event_id, version, parent, *rest = json.loads(line[5:split])
        topic = rest[0] if rest else None
        return cls(key.encode(), line[split + 5 : line.rindex(b"}")], event_id, version, parent, topic=topic)


@dataclass(slots=True)
class _Sent:
    record: Record
    future: Any  # kafka FutureRecordMetadata
    offset: int | None  # spool offset just past the record; None: sent from memory


_IN_SPOOL = Record(b"", b"", "", "")  # stands for a record sent from the spool: it stays there


class Publisher:
    """Owns the producer; takes records from the graph without ever waiting on the broker."""

    def __init__(
        self,
        connect: Callable[[], Any],
        topic: str,
        spool: Spool,
        counters: Counter[str],
        *,
        buffer_events: int,
        stall_timeout_s: float,
        backoff_max_s: float,
        describe: Callable[[BaseException], str] = repr,
        name: str = "kafka",
        on_delivered: Callable[[Record, int], None] | None = None,
    ) -> None:
        self._connect = connect
        self._topic = topic
        self._spool = spool
        self._counters = counters
        self._buffer_events = buffer_events
        self._stall_timeout_s = stall_timeout_s
        self._backoff_max_s = backoff_max_s
        self._describe = describe
        self._name = name  # "kafka HOST:PORT" in the outage messages
        self._on_delivered = on_delivered
        self._lock = threading.Lock()  # guards: _mem, _held, _spooling and spool appends
        self._wake = threading.Event()
        self._mem: deque[Record] = deque()
        self._held = 0  # records in memory: buffered or in flight from memory
        self._spooling = spool.pending  # a restart replays what the spool still holds
        self._inflight: deque[_Sent] = deque()
        self._read_offset = spool.committed
        self._producer: Any = None
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._last_ack = time.monotonic()
        self._outage = False  # logged once per outage
        self._told_untopiced = False  # spooled records without a topic: logged once
        self._told_topics: set[str] = set()  # spooled records for another topic: logged once each
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"kafka-{topic}", daemon=True)

    # --- the graph's side ------------------------------------------------------------------

    def offer_nowait(self, records: Sequence[Record]) -> bool:
        """Buffer records in memory; False when they must go to the spool (`offer`, off the loop)."""
        self._stamp(records)
        if not self._lock.acquire(blocking=False) and not self._lock.acquire(timeout=0.002):
            return False  # held for a disk write: the caller goes through `offer`, off the loop
        try:
            if self._spooling or self._held + len(records) > self._buffer_events:
                return False
            self._mem.extend(records)
            self._held += len(records)
        finally:
            self._lock.release()
        self._wake.set()
        return True

    def offer(self, records: Sequence[Record]) -> None:
        """Buffer records, or append them to the spool (blocking: disk writes)."""
        self._stamp(records)
        with self._lock:
            if not self._spooling and self._held + len(records) <= self._buffer_events:
                self._mem.extend(records)
                self._held += len(records)
            else:
                self._spool_memory_locked("the buffer is full")
                self._spool.append([r.to_line() for r in records])
                self._counters["spooled"] += len(records)
        self._wake.set()

    def _stamp(self, records: Sequence[Record]) -> None:
        """Records offered without a topic are meant for the publisher's."""
        for r in records:
            if r.topic is None:
                r.topic = self._topic

    @property
    def held(self) -> int:
        """Records in memory: buffered, or in flight from memory."""
        return self._held

    def idle(self) -> bool:
        """Nothing left to deliver: memory (buffered or being sent), flight and spool are empty."""
        with self._lock:
            return self._held == 0 and not self._inflight and not self._spool.pending

    def start(self) -> None:
        self._thread.start()

    def close(self, drain_timeout_s: float) -> None:
        """Deliver what can be within the timeout; the rest stays in the spool for the next run."""
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and not self.idle() and self._thread.is_alive():
            time.sleep(0.02)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=self._stall_timeout_s + 5)
        unacked: list[Record] = []
        if not self._thread.is_alive():  # else a hung library call still owns the flight
            unacked = [s.record for s in self._inflight if s.offset is None]
            self._inflight.clear()
        with self._lock:
            self._spool.prepend([r.to_line() for r in unacked])
            self._spool_memory_locked("")
        self._close_producer()
        if self._spool.pending:
            log.warning(
                "kafka: %d bytes of events are left in the spool %s; the next start sends them",
                self._spool.size - self._spool.committed,
                self._spool.path,
            )
        self._spool.close()

    # --- the delivery thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.02)
            self._wake.clear()
            try:
                self._step()
            except Exception as e:  # a library or disk error: spool, back off, try again
                log.error("kafka: delivery loop error: %s", self._describe(e))
                self._recover(self._describe(e))

    def _recover(self, reason: str) -> None:
        try:
            self._fail(reason)
        except OSError as e:  # the spool itself fails (disk full?): keep what is in memory, retry later
            log.error("kafka: cannot write the spool %s: %s", self._spool.path, e)
            self._retry_at = time.monotonic() + self._backoff_max_s

    def _step(self) -> None:
        if self._producer is None:
            if time.monotonic() < self._retry_at:
                return
            try:
                self._producer = self._connect()
            except Exception as e:
                self._fail(self._describe(e))
                return
        self._reap()
        if self._producer is None:
            return
        if self._spooling and (not self._inflight or self._inflight[0].offset is not None):
            self._replay()
        else:
            self._send_memory()

    def _send_memory(self) -> None:
        with self._lock:
            if self._spooling or not self._mem:
                return
            batch = list(self._mem)
            self._mem.clear()
        self._start_clock()
        for i, record in enumerate(batch):
            try:
                future = self._send(record)
            except Exception as e:
                self._fail(f"send failed ({self._describe(e)})", unsent=batch[i:])
                return
            self._inflight.append(_Sent(record, future, None))
        self._inflight[-1].future.add_both(self._wake_up)

    def _replay(self) -> None:
        room = self._buffer_events - len(self._inflight)
        chunk = self._spool.read(self._read_offset, min(room, 2000)) if room > 0 else []
        if not chunk:
            if not self._inflight:
                self._finish_replay()
            return
        self._start_clock()
        for line, end in chunk:
            try:
                future = self._send(self._replayed(Record.from_line(line)))
            except Exception as e:
                self._fail(f"send failed ({self._describe(e)})")
                return
            self._inflight.append(_Sent(_IN_SPOOL, future, end))
            self._read_offset = end
        self._inflight[-1].future.add_both(self._wake_up)

    def _replayed(self, record: Record) -> Record:
        """A record read back from the spool, with the topic it goes to (said once per kind of case)."""
        if record.topic is None:
            record.topic = self._topic
            if not self._told_untopiced:
                self._told_untopiced = True
                log.warning(
                    "kafka: the spool %s holds events written before topics were recorded; "
                    "they are sent to the configured topic %r",
                    self._spool.path,
                    self._topic,
                )
        elif record.topic != self._topic and record.topic not in self._told_topics:
            self._told_topics.add(record.topic)
            log.warning(
                "kafka: the spool %s holds events published for topic %r; they are replayed to %r, "
                "not to the configured topic %r (new events go there)",
                self._spool.path,
                record.topic,
                record.topic,
                self._topic,
            )
        return record

    def _start_clock(self) -> None:
        """Nothing in flight yet: the wait for an acknowledgement starts now."""
        if not self._inflight:
            self._last_ack = time.monotonic()

    def _finish_replay(self) -> None:
        with self._lock:
            if self._read_offset != self._spool.size or not self._spool.compact():
                return
            self._spooling = False
            self._read_offset = 0
        log.info("kafka: the spool is delivered; sending from memory again")

    def _reap(self) -> None:
        """Count the acknowledged head of the flight; a failed send or a stall fails the rest."""
        sent = replayed = 0
        acked: int | None = None
        failure = ""
        now_ns = time.time_ns()
        while self._inflight and self._inflight[0].future.is_done:
            head = self._inflight[0]
            if head.future.failed():
                failure = f"delivery failed ({self._describe(head.future.exception)})"
                break
            self._inflight.popleft()
            if head.offset is None:
                sent += 1
                if self._on_delivered is not None and head.record.span is not None:
                    self._on_delivered(head.record, now_ns)
            else:
                replayed += 1
                acked = head.offset
        if sent or replayed:
            self._acked(sent, replayed, acked)
        elif self._inflight and time.monotonic() - self._last_ack > self._stall_timeout_s:
            failure = f"no acknowledgement for {self._stall_timeout_s:g} s"
        if failure:
            self._fail(failure)

    def _acked(self, sent: int, replayed: int, offset: int | None) -> None:
        self._counters["sent"] += sent
        self._counters["replayed"] += replayed
        if offset is not None:
            self._spool.commit(offset)
        with self._lock:
            self._held -= sent
        self._last_ack = time.monotonic()
        self._backoff_s = 0.0
        if self._outage:
            self._outage = False
            left = self._spool.count(self._spool.committed)
            log.warning("%s reachable again: replaying %d spooled events", self._name, replayed + left)

    def _fail(self, reason: str, unsent: Sequence[Record] = ()) -> None:
        """Put every unacknowledged record back in order (spool head), drop the producer, back off."""
        failed = [s.record for s in self._inflight if s.offset is None] + list(unsent)
        self._counters["failed"] += len(self._inflight) + len(unsent)
        self._inflight.clear()
        self._close_producer()
        with self._lock:
            if failed:
                self._spool.prepend([r.to_line() for r in failed])
                self._counters["spooled"] += len(failed)
            self._spool_memory_locked(reason)
            self._held = 0
            self._read_offset = self._spool.committed
        self._backoff_s = min(max(0.2, self._backoff_s * 2), self._backoff_max_s)
        self._retry_at = time.monotonic() + self._backoff_s
        if not self._outage:
            self._outage = True
            log.warning("%s unreachable (%s): spooling events to %s", self._name, reason, self._spool.path)
        else:
            log.debug("kafka: %s; retrying in %.1f s", reason, self._backoff_s)

    def _spool_memory_locked(self, reason: str) -> None:
        """Switch to the spool: the memory buffer goes first, in order (caller holds the lock)."""
        if self._mem:
            self._spool.append([r.to_line() for r in self._mem])
            self._counters["spooled"] += len(self._mem)
            self._held -= len(self._mem)
            self._mem.clear()
        if not self._spooling and reason:
            log.info("kafka: %s; new events go to the spool", reason)
        self._spooling = True

    def _send(self, record: Record) -> Any:
        topic = record.topic or self._topic
        return self._producer.send(topic, value=record.value, key=record.key, headers=record.headers())

    def _wake_up(self, _: Any) -> None:
        self._wake.set()

    def _close_producer(self) -> None:
        """Drop the producer at once: what it still holds is in the spool already."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            # kafka-python's close() flushes first and raises while records are pending, leaving
            # the producer open; aborting its sender first fails them (they are spooled) and
            # lets close() release the connections.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
            producer.close(timeout=1)
        except Exception as e:  # closing a broken producer: nothing left to save
            log.debug("kafka: closing the producer: %s", self._describe(e))
