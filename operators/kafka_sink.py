"""`sink.kafka`: publishes a graph's events (engine/events.py) to a Kafka topic, at least once.

Messages are keyed by stream id (one partition per stream: its order holds) and carry the
headers `event_id`, `schema_version` and, for traced frames, the W3C `traceparent`. The
producer (kafka-python) sends with acks=all, one request in flight per connection, and
idempotence when the broker supports it. When the broker is down, hangs or falls behind, the
events go to a local spool (operators/kafka_spool.py) and are replayed in order once it is
back, also after a restart of the engine; the graph never waits on the broker. Each spooled
event keeps the topic it was published for and is replayed to it, even after a restart with
another `topic` (that one applies to new events); spools of older versions, which hold no
topic, replay to the configured topic (logged once).

Counters (summary `nodes.<id>.events`): accepted (events handed to the sink), sent (acked
from memory), spooled (written to the spool), replayed (acked from the spool), failed (send
attempts that failed; those events are replayed from the spool).

Reachability: before kafka-python is asked to bootstrap, every bootstrap address gets a plain
TCP connection attempt (in parallel, `connect_timeout_s` each). When none opens, the sink
fails at once with the address and the cause (connection refused, name not resolved, timeout;
authentication failures come from kafka-python's own report), both in `validate --connect`
and at run time. While the sink runs it says one warning when the brokers become unreachable
(`kafka HOST:PORT unreachable (CAUSE): spooling events to PATH`) and one when they are back
(`kafka HOST:PORT reachable again: replaying N spooled events`); kafka-python's own warnings
and errors about connections are dropped meanwhile (all of them pass when `framegraph.kafka`
logs at DEBUG), except those about authentication, authorization and TLS. Addresses are shown
with any `user:password@` masked and every configured secret scrubbed.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from opentelemetry import trace
from pydantic import ConfigDict, Field, SecretStr, model_validator

from engine.errors import FramegraphError, OperatorError
from engine.events import (
    SCHEMA_VERSION,
    DegradationWatch,
    HealthStatus,
    SummaryPolicy,
    dumps,
    frame_events,
    health_event,
)
from engine.frame import Frame, Item, StreamInfo, now_ns
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel
from engine.tracing import traceparent
from operators.kafka_publisher import Publisher, Record
from operators.kafka_spool import FsyncPolicy, Spool

log = logging.getLogger("framegraph.kafka")
COUNTERS = ("accepted", "sent", "spooled", "replayed", "failed")


class KafkaSinkConfig(StrictModel):
    """Options of `sink.kafka`."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)  # no password in errors

    bootstrap: str = Field(min_length=1, description="Brokers: host:port[,host:port...].")
    topic: str = Field("framegraph.events", pattern=r"^[A-Za-z0-9._\-]{1,249}$")
    client_id: str = "framegraph"
    summaries: SummaryPolicy = Field(
        "every_frame", description="Detection summaries: every frame, only frames with detections, never."
    )
    health_events: bool = Field(True, description="Publish stream.health (connected, degraded, ended...).")
    buffer_events: int = Field(
        10_000, ge=1, le=10_000_000, description="Events held in memory (and in flight); beyond: the spool."
    )
    spool_dir: str | None = Field(
        None, description="Spool directory (keep it on a persistent disk); None: <output>/spool."
    )
    fsync: FsyncPolicy = Field(
        "interval",
        description="Spool fsync: always (survives a machine crash; slow), interval, never.",
    )
    fsync_interval_s: float = Field(
        1.0, gt=0, description="With fsync interval: the longest time between fsyncs."
    )
    linger_ms: int = Field(5, ge=0, le=10_000, description="How long the producer waits to fill a batch.")
    batch_size_bytes: int = Field(262_144, ge=1024, description="Producer batch size per partition.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    idempotence: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on when the broker supports it; on: fail without it."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="One produce request's timeout (then retried).")
    delivery_timeout_s: float = Field(30.0, gt=0, description="A send fails after this; it is replayed.")
    stall_timeout_s: float = Field(
        10.0, gt=0, description="No acknowledgement this long: the broker counts as down, events spool."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="How long one connection attempt may take.")
    retry_backoff_max_s: float = Field(2.0, gt=0, description="The longest wait between reconnections.")
    drain_timeout_s: float = Field(
        10.0, ge=0, description="At the end, how long to deliver what is pending; the rest stays spooled."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="Write ${env:VAR}: never put it in the file.")
    ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates.")
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = Field(None, description="Password of ssl_keyfile.")
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSinkConfig:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(
                f"{self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("sasl_* settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if self.request_timeout_s + self.linger_ms / 1000 > self.delivery_timeout_s:
            raise ValueError("delivery_timeout_s must cover request_timeout_s and linger_ms")
        return self

    def secrets(self) -> list[str]:
        """The secret values, to scrub from any text that leaves the sink."""
        return [s.get_secret_value() for s in (self.sasl_password, self.ssl_password) if s is not None]


def producer_options(cfg: KafkaSinkConfig) -> dict[str, Any]:
    """The typed config translated into kafka-python's KafkaProducer options (the one adapter)."""
    opts: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap.split(",") if s.strip()],
        "client_id": cfg.client_id,
        "acks": "all",
        "max_in_flight_requests_per_connection": 1,  # order within a partition, also across retries
        "linger_ms": cfg.linger_ms,
        "batch_size": cfg.batch_size_bytes,
        "compression_type": None if cfg.compression == "none" else cfg.compression,
        "request_timeout_ms": int(cfg.request_timeout_s * 1000),
        "delivery_timeout_ms": int(cfg.delivery_timeout_s * 1000),
        "max_block_ms": int(cfg.connect_timeout_s * 1000),
        "bootstrap_timeout_ms": int(cfg.connect_timeout_s * 1000),
        "reconnect_backoff_max_ms": int(cfg.retry_backoff_max_s * 1000),
        "security_protocol": cfg.security_protocol,
    }
    if cfg.idempotence != "auto":  # auto: kafka-python's default, on unless the broker is too old
        opts["enable_idempotence"] = cfg.idempotence == "on"
    if cfg.sasl_mechanism:
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = cfg.sasl_password.get_secret_value() if cfg.sasl_password else None
    if cfg.security_protocol.endswith("SSL"):
        opts["ssl_cafile"] = cfg.ssl_cafile
        opts["ssl_certfile"] = cfg.ssl_certfile
        opts["ssl_keyfile"] = cfg.ssl_keyfile
        opts["ssl_password"] = cfg.ssl_password.get_secret_value() if cfg.ssl_password else None
        opts["ssl_check_hostname"] = cfg.ssl_check_hostname
    return opts


class SecretFilter(logging.Filter):
    """Masks secrets in log records: kafka-python logs SASL PLAIN requests, password included, at DEBUG."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # as text, and as it appears inside the repr of bytes (SaslAuthenticateRequest(auth_bytes=b'...'))
        self.secrets = sorted(
            {f for s in secrets if s for f in (s, repr(s.encode())[2:-1])}, key=len, reverse=True
        )

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


class QuietFilter(logging.Filter):
    """Drops kafka-python's warnings and errors about connections while a sink reports them itself.

    Authentication, authorization and TLS records always pass (the last one is kept for the
    sink's own message), and so does everything when `framegraph.kafka` logs at DEBUG.
    """

    AUTH = re.compile(r"authenticat|authoriz|sasl|ssl|certificate", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__()
        self.auth_error: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or log.isEnabledFor(logging.DEBUG):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        errors = [a for a in args if isinstance(a, BaseException)]
        if any(self.AUTH.search(type(e).__name__) for e in errors) or (
            not errors and self.AUTH.search(record.getMessage())
        ):
            self.auth_error = record.getMessage()
            return True
        return False


def bootstrap_addresses(bootstrap: str) -> list[str]:
    """The `host:port` entries of a bootstrap string."""
    return [s.strip() for s in bootstrap.split(",") if s.strip()]


def shown_address(address: str) -> str:
    """An address fit for a message: any `user:password@` in front of the host becomes `***@`."""
    return re.sub(r"^.*@", "***@", address)


def tcp_cause(address: str, timeout_s: float) -> str | None:
    """None when a TCP connection to `host:port` opens within the timeout; else why not."""
    host, _, port = shown_address(address).removeprefix("***@").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except socket.gaierror:
        return "name not resolved"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "timeout"
    except ValueError:
        return "not a host:port address"
    except OSError as e:
        return (e.strerror or type(e).__name__).lower()


def reach(addresses: Sequence[str], timeout_s: float) -> dict[str, str | None]:
    """Each address's `tcp_cause`, tried all at once (the slowest sets the time)."""
    if len(addresses) == 1:
        return {addresses[0]: tcp_cause(addresses[0], timeout_s)}
    with ThreadPoolExecutor(len(addresses)) as pool:
        causes = list(pool.map(lambda a: tcp_cause(a, timeout_s), addresses))
    return dict(zip(addresses, causes, strict=True))


class BrokerUnreachable(OperatorError):
    """No bootstrap broker could be reached; the message is the cause, credentials masked."""


def kafka_loggers() -> list[logging.Logger]:
    """kafka-python's loggers (one per module, made at import)."""
    names = [n for n in logging.root.manager.loggerDict if n == "kafka" or n.startswith("kafka.")]
    return [logging.getLogger(n) for n in names]


class KafkaSink(Operator[KafkaSinkConfig]):
    """Turns frames and stream lifecycle into events, and hands them to the publisher thread."""

    Config = KafkaSinkConfig
    consumes, produces = "any", "same"

    def __init__(self, config: KafkaSinkConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self._watch = DegradationWatch(ctx.graph_name)
        # stream -> [at_ns of the last LOST, connected_ns of the last (re)connect] published
        self._seen: dict[str, list[int]] = {}
        self._publisher: Publisher | None = None
        self._secret_filter = SecretFilter(config.secrets())
        self._quiet_filter = QuietFilter()

    @property
    def shown_bootstrap(self) -> str:
        """The bootstrap addresses as messages show them: credentials masked, secrets scrubbed."""
        shown = ",".join(shown_address(a) for a in bootstrap_addresses(self.config.bootstrap))
        return self._secret_filter.scrub(shown)

    @property
    def spool_path(self) -> Path:
        base = Path(self.config.spool_dir) if self.config.spool_dir else Path(self.ctx.output_dir) / "spool"
        return base / f"{self.ctx.graph_name or 'graph'}.{self.ctx.node_id}.jsonl"

    async def setup(self) -> None:
        cfg = self.config
        self._guard_logs()
        for name in COUNTERS:  # every key exists before the delivery thread counts
            self.ctx.metrics.events[name] += 0
        spool = await self.ctx.run_blocking(Spool, self.spool_path, cfg.fsync, cfg.fsync_interval_s)
        if spool.pending:
            log.warning("kafka: %s holds undelivered events; they are sent first", spool.path)
        self._publisher = Publisher(
            self._connect,
            cfg.topic,
            spool,
            self.ctx.metrics.events,
            buffer_events=cfg.buffer_events,
            stall_timeout_s=cfg.stall_timeout_s,
            backoff_max_s=cfg.retry_backoff_max_s,
            describe=self.describe,
            name=f"kafka {self.shown_bootstrap}",
            on_delivered=self._delivered if self.ctx.tracer is not None else None,
        )
        self._publisher.start()

    probe_replaces_setup = True  # setup starts the publisher and opens the spool: not for a check

    async def probe(self) -> str | None:
        """Reach the brokers with this sink's own settings (security included) and look the topic up."""
        cfg = self.config

        def look() -> str:
            producer = self._connect()  # fails here on unreachable brokers, refused TLS or SASL
            try:
                partitions = producer.partitions_for(cfg.topic)  # a metadata request: auth, ACLs
            finally:
                producer.close(timeout=1)
            if not partitions:
                return f"brokers answer; topic {cfg.topic!r} does not exist yet (the broker may create it)"
            return f"brokers answer; topic {cfg.topic!r} has {len(partitions)} partition(s)"

        try:
            found: str = await self.ctx.run_blocking(look)
            return found
        except Exception as e:
            why = self.describe(e)
            if type(e).__name__ == "KafkaTimeoutError":  # the topic's metadata did not come in time
                why = f"no broker answers within {cfg.connect_timeout_s:g} s ({why})"
            raise OperatorError(f"kafka {self.shown_bootstrap}: {why}") from e

    async def teardown(self) -> None:
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await self.ctx.run_blocking(publisher.close, self.config.drain_timeout_s)
        for logger in kafka_loggers():
            logger.removeFilter(self._secret_filter)
            logger.removeFilter(self._quiet_filter)

    async def on_stream_start(self, info: StreamInfo) -> None:
        # stamped when the source connected: the start reaches this sink after the nodes before it
        # set the stream up, by when its first frames have been captured
        self._seen[info.stream_id] = [0, info.connected_ns or 0]
        await self._health(info.stream_id, "connected", at_ns=info.connected_ns)

    async def on_stream_lost(self, stream_id: str, reason: str, at_ns: int) -> None:
        # once per outage, stamped when the source noticed (not when the notice got through the
        # queues): a stream reaching this sink on two edges brings each notice twice, maybe late
        seen = self._seen.setdefault(stream_id, [0, 0])
        if at_ns > seen[0]:
            seen[0] = at_ns
            await self._health(stream_id, "reconnecting", reason, at_ns=at_ns)

    async def on_stream_reset(self, info: StreamInfo) -> Sequence[Item]:
        seen = self._seen.setdefault(info.stream_id, [0, 0])
        connected_ns = info.connected_ns or 0
        if connected_ns == 0 or connected_ns > seen[1]:
            seen[1] = connected_ns
            await self._health(info.stream_id, "connected", "reconnected", at_ns=info.connected_ns)
        return ()

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self._watch.forget(stream_id)
        self._seen.pop(stream_id, None)
        # the source's own words: "end of file", "stopped", or why it gave up (scrubbed)
        await self._health(
            stream_id,
            "ended",
            self.ctx.end_reasons.get(stream_id, ""),
            at_ns=self.ctx.end_at_ns.get(stream_id),
        )
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame):
            events = frame_events(item, self.ctx.graph_name, self.config.summaries)
            if self.config.health_events and (change := self._watch.check(item)) is not None:
                events.insert(0, change)
            await self._publish(events, item)
        return (item,)

    def describe(self, error: BaseException) -> str:
        """An error as text with every configured secret masked (kafka-python's errors already
        start with their class name: it is not repeated)."""
        name, text = type(error).__name__, str(error)
        if isinstance(error, FramegraphError):  # the sink's own errors: their text is the message
            return self._secret_filter.scrub(text)
        return self._secret_filter.scrub(text if text.startswith(name) else f"{name}: {text}")

    async def _health(
        self, stream_id: str, status: HealthStatus, reason: str = "", at_ns: int | None = None
    ) -> None:
        if self.config.health_events:
            await self._publish([health_event(stream_id, status, self.ctx.graph_name, reason, at_ns)])

    async def _publish(self, events: list[dict[str, Any]], frame: Frame | None = None) -> None:
        if not events or self._publisher is None:
            return
        parent = traceparent(frame) if frame is not None else None
        key = events[0]["stream_id"].encode()  # the events of one call share their stream
        topic = self.config.topic
        records = [Record(key, dumps(e), e["event_id"], SCHEMA_VERSION, parent, topic=topic) for e in events]
        if frame is not None and frame.trace is not None:
            records[-1].span, records[-1].offered_ns = frame.trace, now_ns()
        self.ctx.metrics.events["accepted"] += len(records)
        if not self._publisher.offer_nowait(records):
            await self.ctx.run_blocking(self._publisher.offer, records)

    def _connect(self) -> Any:
        """A producer connected to the brokers, within about `connect_timeout_s`; BrokerUnreachable
        (with the cause) when no bootstrap address opens, at once when they all refuse."""
        from kafka import KafkaProducer

        cfg = self.config
        deadline = time.monotonic() + cfg.connect_timeout_s
        causes = reach(bootstrap_addresses(cfg.bootstrap), cfg.connect_timeout_s)
        if all(c is not None for c in causes.values()):
            raise BrokerUnreachable(self._unreachable(causes))
        self._guard_logs()  # again at each connection: kafka-python imports some modules late
        self._quiet_filter.auth_error = None
        opts = producer_options(cfg)
        opts["bootstrap_timeout_ms"] = int(max(0.5, deadline - time.monotonic() - 0.25) * 1000)  # in time
        try:
            return KafkaProducer(**opts)
        except Exception as e:
            if type(e).__name__ != "KafkaTimeoutError":
                raise
            if self._quiet_filter.auth_error is not None:
                raise BrokerUnreachable(
                    f"authentication failed ({self._secret_filter.scrub(self._quiet_filter.auth_error)})"
                ) from e
            raise BrokerUnreachable(
                f"no broker answers within {cfg.connect_timeout_s:g} s (TCP connects, Kafka does not "
                f"answer: {self.describe(e)})"
            ) from e

    def _unreachable(self, causes: dict[str, str | None]) -> str:
        """The cause of an outage: one cause for all addresses, or each address with its own."""
        kinds = set(causes.values())
        if len(kinds) == 1:
            (cause,) = kinds
            if cause == "timeout":
                return f"no broker answers within {self.config.connect_timeout_s:g} s (timeout)"
            return str(cause)
        parts = [f"{shown_address(a)}: {c}" for a, c in causes.items()]
        return self._secret_filter.scrub("; ".join(parts))

    def _guard_logs(self) -> None:
        import kafka  # noqa: F401  (its loggers exist once it is imported)

        for logger in kafka_loggers():  # once per logger: a filter is kept once
            if self._secret_filter.secrets:
                logger.addFilter(self._secret_filter)
            logger.addFilter(self._quiet_filter)

    def _delivered(self, record: Record, acked_ns: int) -> None:
        """A `kafka.delivery` span in the frame's trace, from hand-over to the broker's ack.

        The frame's root span has ended by then (the sink handed the frame on), so the span is
        made from the root's context; FrameTracer.child only takes a recording parent.
        """
        tracer = self.ctx.tracer
        parent = record.span.get_span_context()
        if tracer is None or not parent.trace_flags.sampled:
            return
        span = tracer.tracer.start_span(
            "kafka.delivery",
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            start_time=record.offered_ns,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic or self.config.topic,
            },
        )
        span.end(end_time=acked_ns)
