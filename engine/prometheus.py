"""Prometheus exposition of a run's metrics: read at scrape time, no cost per frame."""

from __future__ import annotations

import errno
from collections.abc import Collection, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from engine.errors import FramegraphError
from engine.metrics import Metrics, StreamState


class MetricsCollector(Collector):
    """Translates engine.metrics.Metrics into Prometheus families."""

    def __init__(self, metrics: Metrics, graph: str, held_failed: Collection[str] = ()) -> None:
        self.metrics = metrics
        self.graph = graph
        self.held_failed = held_failed  # failed streams a worker holds back (run by nobody now)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        g = self.graph
        frames_in = CounterMetricFamily(
            "framegraph_frames_in", "Frames emitted by a stream's source", labels=["graph", "stream"]
        )
        frames_out = CounterMetricFamily(
            "framegraph_frames_out", "Frames through the primary sink", labels=["graph", "stream"]
        )
        latency = GaugeMetricFamily(
            "framegraph_latency_ms", "Capture-to-sink latency", labels=["graph", "stream", "quantile"]
        )
        up = GaugeMetricFamily(
            "framegraph_stream_up",
            "1 while a stream's frames flow (running), else 0",
            labels=["graph", "stream"],
        )
        state = GaugeMetricFamily(
            "framegraph_stream_state",
            "1 for a stream's current state (starting, running, reconnecting, ended, stopped, failed)",
            labels=["graph", "stream", "state"],
        )
        for sid, s in self.metrics.streams.items():
            up.add_metric([g, sid], 1 if s.state is StreamState.RUNNING else 0)
            for st in StreamState:
                state.add_metric([g, sid, st.value], 1 if s.state is st else 0)
            frames_in.add_metric([g, sid], s.frames_in)
        for sid in sorted(set(self.held_failed) - set(self.metrics.streams)):  # still a camera down
            up.add_metric([g, sid], 0)
            for st in StreamState:
                state.add_metric([g, sid, st.value], 1 if st is StreamState.FAILED else 0)
            frames_out.add_metric([g, sid], s.frames_out)
            for q, value in s.latency.percentiles().items():
                if value is not None:
                    latency.add_metric([g, sid, q], value)
        items = CounterMetricFamily(
            "framegraph_node_items", "Items into and out of a node", labels=["graph", "node", "direction"]
        )
        dropped = CounterMetricFamily(
            "framegraph_dropped", "Items dropped", labels=["graph", "node", "stream", "reason"]
        )
        stage = GaugeMetricFamily(
            "framegraph_stage_ms",
            "Per-stage queue wait and work",
            labels=["graph", "node", "kind", "quantile"],
        )
        events = CounterMetricFamily(
            "framegraph_node_events", "Named node counters", labels=["graph", "node", "event"]
        )
        for nid, m in self.metrics.nodes.items():
            items.add_metric([g, nid, "in"], m.items_in)
            items.add_metric([g, nid, "out"], m.items_out)
            for (sid, reason), n in m.dropped.items():
                dropped.add_metric([g, nid, sid, reason], n)
            for kind, samples in (("queue_wait", m.queue_wait), ("work", m.work)):
                for q, value in samples.percentiles().items():
                    if value is not None:
                        stage.add_metric([g, nid, kind, q], value)
            for name, n in m.events.items():
                events.add_metric([g, nid, name], n)
        yield from (up, state, frames_in, frames_out, latency, items, dropped, stage, events)


def serve(metrics: Metrics, graph: str, port: int, address: str = "127.0.0.1") -> CollectorRegistry:
    """Serve /metrics on address:port (a daemon thread) for this run; returns the registry.

    Raises FramegraphError, naming the port, when it cannot be bound (in use, not allowed).
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(MetricsCollector(metrics, graph))
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as e:
        raise FramegraphError(
            f"--metrics-port {port}: cannot serve on {address}:{port}: {bind_reason(e)}"
        ) from e
    return registry


def bind_reason(error: OSError) -> str:
    """Why a listening socket could not be bound, in a user's words."""
    if error.errno == errno.EADDRINUSE:
        return "the port is already in use"
    if error.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return error.strerror or str(error)
