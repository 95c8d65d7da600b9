"""sink.kafka when the brokers cannot be reached: the address and cause in `validate --connect`
and at run time, failing fast on refusals, one warning per outage and recovery, and
kafka-python's own connection noise kept out of the logs (authentication errors kept)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError

from engine.errors import OperatorError
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from engine.testing import run_graph
from operators.kafka_publisher import Publisher
from operators.kafka_sink import KafkaSink, KafkaSinkConfig, QuietFilter, shown_address
from operators.kafka_spool import Spool
from tests.unit.kafka_fakes import FakeBroker, records, wait_until

SECRET = "pw-51c2-do-not-leak"


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def mute_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word: TCP works, Kafka does not."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def sink(tmp_path: Path, **config: object) -> KafkaSink:
    cfg = KafkaSinkConfig.model_validate(config)
    return KafkaSink(cfg, OperatorContext("out", NodeMetrics("out"), output_dir=tmp_path))


async def probe_error(s: KafkaSink) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(OperatorError) as e:
        await s.probe()
    return str(e.value), time.monotonic() - started


async def test_connect_check_names_the_address_and_refusal_and_fails_fast(tmp_path: Path) -> None:
    port = closed_port()
    text, took = await probe_error(sink(tmp_path, bootstrap=f"127.0.0.1:{port}"))
    assert text == f"kafka 127.0.0.1:{port}: connection refused"
    assert took < 1.0  # not the whole connect_timeout_s (5 s)


async def test_connect_check_tells_each_address_its_cause_and_masks_credentials(tmp_path: Path) -> None:
    port = closed_port()
    s = sink(
        tmp_path,
        bootstrap=f"fg:{SECRET}@nosuchhost.invalid:9092, 127.0.0.1:{port}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="fg",
        sasl_password=SECRET,
    )
    text, took = await probe_error(s)
    assert SECRET not in text
    assert text == (
        f"kafka ***@nosuchhost.invalid:9092,127.0.0.1:{port}: ***@nosuchhost.invalid:9092: name not resolved; "
        f"127.0.0.1:{port}: connection refused"
    )
    assert took < 3.0
    assert shown_address("user:pw@host:1") == "***@host:1"


async def test_connect_check_of_a_silent_broker_says_no_answer_within_the_timeout(
    tmp_path: Path, mute_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    text, took = await probe_error(sink(tmp_path, bootstrap=f"127.0.0.1:{mute_server}", connect_timeout_s=1))
    assert text.startswith(f"kafka 127.0.0.1:{mute_server}: no broker answers within 1 s (TCP connects")
    assert took < 1.5  # within connect_timeout_s, so `validate --timeout-s` equal to it still hears why
    assert not [r for r in caplog.records if r.name.startswith("kafka")]  # no raw kafka-python lines


def test_quiet_filter_drops_connection_noise_and_keeps_authentication_errors() -> None:
    quiet = QuietFilter()

    def record(level: int, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("kafka.net.manager", level, __file__, 1, msg, args, None)

    assert not quiet.filter(
        record(logging.ERROR, "Connection failed: %s", KafkaConnectionError("111 ECONNREFUSED"))
    )
    assert not quiet.filter(
        record(logging.WARNING, "Bootstrap %s not ready; waiting %.2f secs", "bootstrap-0", 1.2)
    )
    assert quiet.auth_error is None
    auth = record(logging.ERROR, "Connection failed: %s", SaslAuthenticationFailedError("bad credentials"))
    assert quiet.filter(auth)
    assert quiet.auth_error is not None
    assert "bad credentials" in quiet.auth_error
    assert quiet.filter(record(logging.DEBUG, "Request %d", 3))  # below WARNING: the level decides
    logger = logging.getLogger("framegraph.kafka")
    level = logger.level
    logger.setLevel(logging.DEBUG)  # debugging the sink: every kafka-python line passes
    try:
        assert quiet.filter(record(logging.ERROR, "Connection failed: %s", KafkaConnectionError("x")))
    finally:
        logger.setLevel(level)


def test_one_warning_when_the_broker_goes_and_one_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    path = tmp_path / "s.jsonl"
    try:

        def connect() -> object:
            try:
                return broker.connect()
            except Exception as e:
                raise OperatorError("connection refused") from e

        p = Publisher(
            connect,
            "t",
            Spool(path),
            Counter(),
            buffer_events=1000,
            stall_timeout_s=5,
            backoff_max_s=0.05,
            describe=str,
            name="kafka b0:9092",
        )
        p.start()
        caplog.set_level(logging.WARNING, logger="framegraph.kafka")
        broker.state = "down"
        for r in records(40):
            if not p.offer_nowait([r]):
                p.offer([r])
        wait_until(lambda: p._counters["spooled"] >= 40)
        time.sleep(0.3)  # several reconnection attempts fail meanwhile
        broker.state = "up"
        wait_until(p.idle)
        p.close(1)
    finally:
        broker.close()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"kafka b0:9092 unreachable (connection refused): spooling events to {path}",
        "kafka b0:9092 reachable again: replaying 40 spooled events",
    ]


async def test_a_run_against_a_refusing_broker_logs_one_clear_warning_and_no_kafka_python_errors(
    tmp_path: Path, mute_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    graph = f"""
name: g
sources: [{{id: s0, url: synthetic, op: test.synthetic, config: {{frames: 30, fps: 30}}}}]
nodes:
  - id: out
    op: sink.kafka
    inputs: [sources]
    config: {{bootstrap: "127.0.0.1:{mute_server}", connect_timeout_s: 0.3, retry_backoff_max_s: 0.1,
              drain_timeout_s: 0.5}}
"""
    caplog.set_level(logging.WARNING)
    _, summary = await run_graph(graph, output_dir=tmp_path)
    assert summary["nodes"]["out"]["events"]["spooled"] == 32
    assert not [r for r in caplog.records if r.name.startswith("kafka")]  # quieted while the sink runs
    outage = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1
    assert outage[0].startswith(f"kafka 127.0.0.1:{mute_server} unreachable (no broker answers within 0.3 s")
    assert outage[0].endswith(f"spooling events to {tmp_path / 'spool' / 'g.out.jsonl'}")
