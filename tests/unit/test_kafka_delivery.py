"""sink.kafka's delivery against a scripted broker: order, spool, replay, restart, never blocking."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from operators.kafka_publisher import Publisher, Record
from operators.kafka_spool import Spool, SpoolBusy
from tests.unit.kafka_fakes import FakeBroker, expected, first_seen, records, wait_until


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    b = FakeBroker()
    yield b
    b.close()


def publisher(broker: FakeBroker, path: Path, buffer_events: int = 1000, stall_s: float = 5.0) -> Publisher:
    p = Publisher(
        broker.connect,
        "t",
        Spool(path),
        Counter(),
        buffer_events=buffer_events,
        stall_timeout_s=stall_s,
        backoff_max_s=0.1,
    )
    p.start()
    return p


def counters(p: Publisher) -> Counter[str]:
    return p._counters


def offer_slowly(p: Publisher, batch: list[Record], per_s: float = 2000) -> float:
    """Offer one record at a time as a graph would; the longest any offer took (s)."""
    worst = 0.0
    for r in batch:
        started = time.perf_counter()
        if not p.offer_nowait([r]):
            p.offer([r])
        worst = max(worst, time.perf_counter() - started)
        time.sleep(1 / per_s)
    return worst


def test_steady_delivery_goes_from_memory_in_order(broker: FakeBroker, tmp_path: Path) -> None:
    p = publisher(broker, tmp_path / "s.jsonl")
    offered = records(500)
    offer_slowly(p, offered, per_s=20_000)
    wait_until(p.idle)
    p.close(1)
    assert broker.stored == [(r.key.decode(), r.event_id) for r in offered]
    assert +counters(p) == {"sent": 500}


def test_outage_spools_and_replays_in_order_then_memory_again(broker: FakeBroker, tmp_path: Path) -> None:
    p = publisher(broker, tmp_path / "s.jsonl")
    offered = records(600)
    offer_slowly(p, offered[:200])
    broker.state = "down"
    worst = offer_slowly(p, offered[200:400])
    assert p._spooling
    assert p._spool.size > 0
    broker.state = "up"
    offer_slowly(p, offered[400:])
    wait_until(p.idle)
    assert first_seen(broker.stored) == expected(offered)
    c = counters(p)
    assert c["failed"] > 0
    assert c["spooled"] > 0
    assert c["replayed"] > 0
    assert not p._spooling
    assert p._spool.size == 0
    sent = c["sent"]
    offer_slowly(p, records(10, start=600))
    wait_until(p.idle)
    p.close(1)
    assert counters(p)["sent"] == sent + 10  # from memory again
    assert worst < 0.05  # the graph never waited on the broker


def test_a_hung_broker_is_detected_by_the_stall_timeout_and_nothing_waits(
    broker: FakeBroker, tmp_path: Path
) -> None:
    p = publisher(broker, tmp_path / "s.jsonl", stall_s=0.3)
    offered = records(400)
    offer_slowly(p, offered[:100])
    broker.state = "hung"
    worst = offer_slowly(p, offered[100:300], per_s=400)  # 0.5 s of hang
    assert p._spooling
    assert p._spool.size > 0
    assert counters(p)["failed"] > 0  # the records stuck in flight went back to the spool's head
    broker.state = "up"
    offer_slowly(p, offered[300:])
    wait_until(p.idle)
    p.close(1)
    assert first_seen(broker.stored) == expected(offered)
    assert worst < 0.05


def test_a_full_buffer_spills_to_the_spool_in_order(tmp_path: Path) -> None:
    broker = FakeBroker(ack_delay_s=0.05)
    try:
        p = publisher(broker, tmp_path / "s.jsonl", buffer_events=20)
        offered = records(300)
        offer_slowly(p, offered, per_s=50_000)
        wait_until(p.idle)
        p.close(1)
        assert counters(p)["spooled"] > 0
        assert counters(p)["failed"] == 0
        assert first_seen(broker.stored) == expected(offered)
        assert len(broker.stored) == 300  # no failure: no duplicate either
    finally:
        broker.close()


def test_a_restart_replays_what_the_spool_still_holds(broker: FakeBroker, tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    broker.state = "down"
    first = publisher(broker, path)
    offered = records(50)
    offer_slowly(first, offered)
    first.close(0.2)  # the broker never came back: everything stays spooled
    assert len(path.read_bytes().splitlines()) == 50
    broker.state = "up"
    second = publisher(broker, path)
    more = records(5, start=50)
    offer_slowly(second, more)
    wait_until(second.idle)
    second.close(1)
    assert first_seen(broker.stored) == expected(offered + more)
    c = counters(second)
    assert c["replayed"] >= 50  # first the spool; the new events behind it, or from memory once it is done
    assert c["replayed"] + c["sent"] == 55


def test_spool_commit_compact_prepend_and_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path, fsync="always")
    lines = [r.to_line() for r in records(4)]
    spool.append(lines[2:])
    spool.prepend(lines[:2])  # records that failed before those spooled go first
    got = spool.read(spool.committed, 10)
    assert [line for line, _ in got] == lines
    spool.commit(got[1][1])
    assert not spool.compact()  # two records are not acknowledged yet
    spool.close()
    with path.open("ab") as f:
        f.write(b'{"m":["s0","half-writ')  # the process died mid-write
    spool = Spool(path)  # a restart: replay from the committed offset, the torn record dropped
    assert [line for line, _ in spool.read(spool.committed, 10)] == lines[2:]
    with pytest.raises(SpoolBusy):
        Spool(path)
    spool.commit(spool.size)
    assert spool.compact()
    assert path.stat().st_size == 0
    spool.close()


def test_record_lines_round_trip_whatever_the_stream_id() -> None:
    record = Record(
        b'cam ",\\"v\\":x', b'{"a":[1,{"b":"}"}]}', "id-1", "1.0", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    )
    back = Record.from_line(record.to_line())
    assert (back.key, back.value, back.event_id, back.schema_version, back.traceparent) == (
        record.key,
        record.value,
        "id-1",
        "1.0",
        record.traceparent,
    )
    assert ("traceparent", record.traceparent.encode()) in back.headers()  # type: ignore[union-attr]


def test_spooled_events_replay_to_the_topic_they_were_meant_for_after_a_topic_change(
    broker: FakeBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.jsonl"
    broker.state = "down"
    first = publisher(broker, path)  # publishes to topic "t"
    old = records(30)
    offer_slowly(first, old)
    first.close(0.2)  # the broker never came back: all 30 stay spooled
    broker.state = "up"
    second = Publisher(
        broker.connect,
        "t.new",
        Spool(path),
        Counter(),
        buffer_events=1000,
        stall_timeout_s=5,
        backoff_max_s=0.1,
    )
    second.start()
    new = records(5, start=30)
    with caplog.at_level(logging.WARNING, logger="framegraph.kafka"):
        offer_slowly(second, new)
        wait_until(second.idle)
        second.close(1)
    assert first_seen(broker.stored) == expected(old + new)
    assert {broker.topics[r.event_id] for r in old} == {"t"}  # where they were meant to go
    assert {broker.topics[r.event_id] for r in new} == {"t.new"}
    said = [r.getMessage() for r in caplog.records if "'t'" in r.getMessage()]
    assert len(said) == 1
    assert "replayed to 't'" in said[0]
    assert "'t.new'" in said[0]


def test_an_old_spool_without_topics_replays_to_the_configured_topic_and_says_so(
    broker: FakeBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.jsonl"
    old = records(10)
    lines = [  # the line format before topics were recorded: four meta fields
        b'{"m":'
        + json.dumps([r.key.decode(), r.event_id, r.schema_version, None]).encode()
        + b',"v":'
        + r.value
        + b"}\n"
        for r in old
    ]
    path.write_bytes(b"".join(lines))
    assert Record.from_line(lines[0]).topic is None
    p = publisher(broker, path)  # topic "t"
    with caplog.at_level(logging.WARNING, logger="framegraph.kafka"):
        wait_until(p.idle)
        p.close(1)
    assert first_seen(broker.stored) == expected(old)
    assert {broker.topics[r.event_id] for r in old} == {"t"}
    said = [r.getMessage() for r in caplog.records if "before topics were recorded" in r.getMessage()]
    assert len(said) == 1
    assert str(path) in said[0]
    assert "'t'" in said[0]


def test_a_spool_line_keeps_the_records_topic() -> None:
    record = Record(b"cam0", b"{}", "id-1", "1.1", topic="site.a.events")
    assert Record.from_line(record.to_line()).topic == "site.a.events"
