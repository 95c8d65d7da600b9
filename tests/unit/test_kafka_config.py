"""sink.kafka's config: SASL/TLS checks, the producer options, and secrets that never leave it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.errors import GraphConfigError
from engine.frame import StreamInfo
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from engine.testing import plan_from_yaml, run_graph
from operators.kafka_sink import KafkaSink, KafkaSinkConfig, producer_options

SECRET = "pw-8f3a-do-not-leak"


def sasl(**kw: object) -> KafkaSinkConfig:
    base: dict[str, object] = {
        "bootstrap": "127.0.0.1:1",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "fg",
        "sasl_password": SECRET,
        "ssl_cafile": "/etc/ssl/ca.pem",
    }
    return KafkaSinkConfig.model_validate({**base, **kw})


def test_producer_options_are_ordered_acked_and_authenticated() -> None:
    opts = producer_options(sasl(bootstrap="a:9093, b:9093", compression="zstd"))
    assert opts["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert opts["acks"] == "all"
    assert opts["max_in_flight_requests_per_connection"] == 1
    assert "enable_idempotence" not in opts  # auto: kafka-python enables it when the broker can
    assert opts["security_protocol"] == "SASL_SSL"
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "fg",
        SECRET,
    )
    assert opts["ssl_cafile"] == "/etc/ssl/ca.pem"
    assert opts["compression_type"] == "zstd"
    assert producer_options(KafkaSinkConfig(bootstrap="a:1", idempotence="on"))["enable_idempotence"] is True


def test_inconsistent_security_settings_are_rejected_without_echoing_the_password() -> None:
    with pytest.raises(ValidationError, match="needs sasl_mechanism") as e:
        sasl(sasl_username=None)
    assert SECRET not in str(e.value)
    with pytest.raises(ValidationError, match="need security_protocol SASL") as e:
        KafkaSinkConfig.model_validate({"bootstrap": "a:1", "sasl_password": SECRET})
    assert SECRET not in str(e.value)
    with pytest.raises(ValidationError, match="delivery_timeout_s"):
        KafkaSinkConfig(bootstrap="a:1", request_timeout_s=40, delivery_timeout_s=30)


def test_the_password_is_masked_in_repr_dumps_and_graph_errors() -> None:
    cfg = sasl()
    assert SECRET not in repr(cfg)
    assert SECRET not in cfg.model_dump_json()
    graph = f"""
name: g
sources: [{{id: s0, url: synthetic, op: test.synthetic}}]
nodes:
  - id: out
    op: sink.kafka
    inputs: [sources]
    config: {{bootstrap: "a:1", security_protocol: SASL_PLAINTEXT, sasl_password: "{SECRET}", bogus: 1}}
"""
    with pytest.raises(GraphConfigError) as e:
        plan_from_yaml(graph)
    assert "bogus" in str(e.value)
    assert SECRET not in str(e.value)


async def test_a_sink_that_cannot_authenticate_never_logs_the_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    graph = f"""
name: g
sources: [{{id: s0, url: synthetic, op: test.synthetic, config: {{frames: 20}}}}]
nodes:
  - id: out
    op: sink.kafka
    inputs: [sources]
    config:
      bootstrap: "127.0.0.1:1"
      security_protocol: SASL_PLAINTEXT
      sasl_mechanism: PLAIN
      sasl_username: fg
      sasl_password: "{SECRET}"
      connect_timeout_s: 0.3
      drain_timeout_s: 0.5
"""
    caplog.set_level(logging.DEBUG)  # every logger, kafka-python's included
    _, summary = await run_graph(graph, output_dir=tmp_path)
    events = summary["nodes"]["out"]["events"]
    assert events["accepted"] == 22  # 20 summaries, connected, ended
    assert events["spooled"] == 22
    assert "kafka 127.0.0.1:1 unreachable (connection refused): spooling events to" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(summary)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


async def test_kafka_python_debug_logs_of_a_sasl_exchange_are_scrubbed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka.protocol.sasl import SaslAuthenticateRequest

    from engine.metrics import NodeMetrics
    from engine.registry import OperatorContext
    from operators.kafka_sink import KafkaSink

    secret = SECRET + "-é"  # non-ASCII: bytes reprs escape it
    plain = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": secret}
    cfg = sasl(**plain, drain_timeout_s=0, connect_timeout_s=0.3)
    sink = KafkaSink(cfg, OperatorContext("out", NodeMetrics("out"), output_dir=tmp_path))
    caplog.set_level(logging.DEBUG)
    await sink.setup()
    # what kafka-python logs at DEBUG when it authenticates with PLAIN
    request = SaslAuthenticateRequest(b"\0fg\0fg\0" + secret.encode())
    logging.getLogger("kafka.net.connection").debug("Request %d: %s", 3, request)
    await sink.teardown()
    assert "SaslAuthenticateRequest(auth_bytes=b'\\x00fg\\x00fg\\x00***')" in caplog.text
    assert secret not in caplog.text
    assert repr(secret.encode())[2:-1] not in caplog.text


def capturing_sink() -> tuple[KafkaSink, list[dict[str, object]]]:
    """A sink.kafka whose published events land in a list (no broker)."""
    sink = KafkaSink(KafkaSinkConfig(bootstrap="a:1"), OperatorContext("out", NodeMetrics("out")))
    published: list[dict[str, object]] = []

    async def capture(events: list[dict[str, object]], frame: object = None) -> None:
        published.extend(events)

    sink._publish = capture  # type: ignore[method-assign]
    return sink, published


async def test_connected_is_stamped_when_the_source_connected_not_when_the_sink_hears_of_it() -> None:
    """Frames captured while nodes before the sink set the stream up must not sort before it."""
    sink, published = capturing_sink()
    await sink.on_stream_start(StreamInfo("cam0", connected_ns=1_700_000_000_000_000_000))
    (event,) = published
    assert event["status"] == "connected"
    assert event["capture_time"] == "2023-11-14T22:13:20.000000Z"


async def test_ended_carries_why_the_stream_ended() -> None:
    """A camera given up on must not look like one that finished: `ended` says the source's reason."""
    sink, published = capturing_sink()
    sink.ctx.end_reasons["cam0"] = (
        "cam0: gave up after 3 reconnects (last: cannot open rtsp://***@10.0.0.5/x)"
    )
    await sink.on_stream_end("cam0")
    await sink.on_stream_end("cam1")  # no reason given
    assert [(e["stream_id"], e["status"], e["reason"]) for e in published] == [
        ("cam0", "ended", "cam0: gave up after 3 reconnects (last: cannot open rtsp://***@10.0.0.5/x)"),
        ("cam1", "ended", ""),
    ]


async def test_an_outage_is_said_when_it_starts_once_and_its_end_when_the_camera_is_back() -> None:
    """Downstream learns a camera is down while it is down, not when it is back."""
    sink, published = capturing_sink()
    await sink.on_stream_start(StreamInfo("cam0", connected_ns=1_700_000_000_000_000_000))
    lost_ns = 1_700_000_030_000_000_000
    await sink.on_stream_lost("cam0", "cam0: rtsp://***@10.0.0.5/x disconnected", lost_ns)
    await sink.on_stream_lost("cam0", "cam0: rtsp://***@10.0.0.5/x disconnected", lost_ns)  # a 2nd edge
    await sink.on_stream_reset(StreamInfo("cam0", connected_ns=1_700_000_060_000_000_000))
    later_ns = lost_ns + 60_000_000_000  # a second outage
    await sink.on_stream_lost("cam0", "cam0: cannot open rtsp://***@10.0.0.5/x: Connection refused", later_ns)
    await sink.on_stream_end("cam0")
    assert [(e["status"], e["reason"]) for e in published] == [
        ("connected", ""),
        ("reconnecting", "cam0: rtsp://***@10.0.0.5/x disconnected"),
        ("connected", "reconnected"),
        ("reconnecting", "cam0: cannot open rtsp://***@10.0.0.5/x: Connection refused"),
        ("ended", ""),
    ]
    assert published[1]["capture_time"] == "2023-11-14T22:13:50.000000Z"  # when the source noticed
    assert published[2]["capture_time"] == "2023-11-14T22:14:20.000000Z"  # when it came back


async def test_an_rtsp_camera_that_never_answers_says_lost_once_then_ends() -> None:
    import asyncio

    from engine.frame import Control, ControlKind
    from engine.registry import SourceContext
    from operators.sources import RtspConfig, RtspSource

    config = RtspConfig(max_reconnects=3, open_timeout_s=1, backoff_initial_s=0.01, backoff_max_s=0.02)
    ctx = SourceContext("cam0", "rtsp://admin:s3cret@127.0.0.1:9/x", NodeMetrics("cam0"), asyncio.Event())
    sent: list[Control] = []

    async def emit(msg: object) -> None:
        assert isinstance(msg, Control)
        sent.append(msg)

    await RtspSource(config, ctx).run(emit)
    assert [m.kind for m in sent] == [ControlKind.LOST, ControlKind.END]
    assert sent[0].reason.startswith("cam0: cannot open rtsp://***@127.0.0.1:9/x")
    assert sent[1].reason.startswith("cam0: gave up after 3 reconnects")
    assert "s3cret" not in sent[0].reason + sent[1].reason


async def test_an_outage_reaching_the_sink_on_two_edges_is_said_once() -> None:
    """LOST and RESET arrive once per input edge, one edge late: one outage, one reconnecting."""
    import asyncio

    import numpy as np

    from engine.frame import Control, ControlKind, Frame, now_ns
    from engine.registry import Emit, Source, register
    from engine.testing import SyntheticConfig, run_graph

    published: list[tuple[str, str]] = []

    @register("test.outage")
    class Outage(Source[SyntheticConfig]):
        Config = SyntheticConfig

        async def run(self, emit: Emit) -> None:
            sid = self.ctx.stream_id
            await emit(Control(ControlKind.START, sid, StreamInfo(sid, width=8, height=8)))
            for seq in range(20):
                if seq == 10:
                    await emit(Control(ControlKind.LOST, sid, reason="cam0: gone"))
                    await asyncio.sleep(0.01)
                    await emit(Control(ControlKind.RESET, sid, StreamInfo(sid, width=8, height=8)))
                await emit(Frame(sid, seq, seq, now_ns(), np.zeros((8, 8, 3), np.uint8)))
            await emit(Control(ControlKind.END, sid))

    @register("test.kafka_capture")
    class Capture(KafkaSink):
        async def setup(self) -> None:
            return None

        async def teardown(self) -> None:
            return None

        async def _publish(self, events: list[dict[str, object]], frame: object = None) -> None:
            published.extend(
                (str(e["status"]), str(e["reason"])) for e in events if e["type"] == "stream.health"
            )

    graph = """
name: t
sources: [{id: cam0, url: x, op: test.outage}]
nodes:
  - {id: fast, op: test.slow, inputs: [sources], config: {delay_ms: 0}}
  - {id: slow, op: test.slow, inputs: [sources], config: {delay_ms: 5}}
  - {id: out, op: test.kafka_capture, inputs: [fast, slow], config: {bootstrap: "a:1"}}
"""
    await run_graph(graph)
    assert published == [
        ("connected", ""),
        ("reconnecting", "cam0: gone"),
        ("connected", "reconnected"),
        ("ended", ""),
    ]
