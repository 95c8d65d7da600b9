"""The text form of a run's summary (`framegraph run` prints it): streams, sources, nodes, failures.

The summary dict (engine.metrics.Metrics.summary, or merged by engine.shards) is the source of
truth; this module only words it so that no two numbers on a line seem to contradict each other.
"""

from __future__ import annotations

from typing import Any

from engine.metrics import failed_streams, failing_nodes

_KAFKA_COUNTERS = ("sent", "spooled")  # what sink.kafka reports in its node's `events`


def format_percentiles(percentiles: dict[str, float | None] | None) -> str:
    """`p50 12.3 ms, p95 15 ms, p99 16 ms`; `n/a` when there were no samples."""
    values = {k: v for k, v in (percentiles or {}).items() if v is not None}
    if not values:
        return "n/a"
    return ", ".join(f"{k} {v:g} ms" for k, v in values.items())


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def stream_line(sid: str, s: dict[str, Any]) -> str:
    """One stream: frames its source read, frames out at the primary sink, drops by node."""
    status = s.get("status", "ok")
    sink = s.get("frames_out_at") or "the sink"
    by_node = s.get("dropped_by_node") or {}
    if by_node:
        drops = f"dropped {s['dropped']} ({_counts(by_node)})"
    elif s.get("dropped"):
        drops = f"dropped {s['dropped']}"
    else:
        drops = "none dropped"
    line = (
        f"  stream {sid} [{status}]: {s['frames_in']} frames read, {s['frames_out']} out at {sink}, "
        f"{drops}; {s['fps']} fps; latency {format_percentiles(s.get('latency_ms'))}"
    )
    if s.get("error"):
        line += f"; error: {s['error']}"
    return line


def source_line(sid: str, n: dict[str, Any]) -> str:
    """One source (its metrics are a node named after its stream): frames emitted, errors, events."""
    parts = [f"{n['out']} frames emitted"]
    if n.get("dropped"):
        parts.append(f"dropped {n['dropped']} ({_counts(n.get('dropped_by_reason', {}))})")
    if n.get("errors"):
        parts.append(f"errors {n['errors']}")
    events = {k: v for k, v in n.get("events", {}).items() if v}
    if events:
        parts.append(_counts(events))
    return f"  source {sid}: " + ", ".join(parts)


def kafka_counters(node: dict[str, Any]) -> dict[str, int]:
    """A sink.kafka node's delivery counters ({} for any other node)."""
    events: dict[str, int] = node.get("events", {})
    return events if all(k in events for k in _KAFKA_COUNTERS) else {}


def node_line(nid: str, n: dict[str, Any]) -> str:
    """One node: items in and out, drops by reason, batching, Kafka delivery, stage times."""
    parts = [f"in {n['in']} out {n['out']}"]
    if n.get("dropped"):
        parts.append(f"dropped {n['dropped']} ({_counts(n.get('dropped_by_reason', {}))})")
    if "mean_batch" in n:
        parts.append(f"mean batch {n['mean_batch']}")
    if degraded := n.get("events", {}).get("degraded_frames", 0):
        parts.append(f"{degraded} degraded (no inference: passed on without detections)")
    events = kafka_counters(n)
    if events:
        kafka = f"kafka sent {events['sent']} / spooled {events['spooled']}"
        extra = {k: events[k] for k in ("replayed",) if events.get(k)}
        if events.get("failed"):  # sends the broker did not acknowledge: spooled and sent again
            extra["unacknowledged sends (spooled, resent)"] = events["failed"]
        parts.append(kafka + (f" ({_counts(extra)})" if extra else ""))
    treated = {
        k.removeprefix("redaction_"): v for k, v in n.get("events", {}).items() if k.startswith("redaction_")
    }
    if treated:
        parts.append(f"redaction {_counts(treated)}")
    line = f"  node {nid}: " + ", ".join(parts)
    if "work_ms" in n:
        line += (
            f" | queue wait {format_percentiles(n.get('queue_wait_ms'))}"
            f"; work {format_percentiles(n['work_ms'])}"
        )
    return line


def failure_lines(summary: dict[str, Any]) -> list[str]:
    """`failed streams: ...`, `failing nodes: ...` and events left in a Kafka spool, each only
    when there is one."""
    lines = []
    streams = failed_streams(summary)
    if streams:
        lines.append("failed streams: " + "; ".join(f"{sid} ({err})" for sid, err in streams.items()))
    nodes = failing_nodes(summary)
    if nodes:
        lines.append(
            "failing nodes: "
            + "; ".join(
                f"{nid} (failed all {summary['nodes'][nid]['in']} items it got: {_counts(errors)}"
                + (f"; last error: {err}" if (err := summary["nodes"][nid].get("last_error")) else "")
                + ")"
                for nid, errors in nodes.items()
            )
        )
    for nid, n in summary["nodes"].items():
        if events := kafka_counters(n):
            left = events["spooled"] - events.get("replayed", 0)
            if left > 0:
                lines.append(
                    f"kafka spool: node {nid} holds {left} event(s) the broker has not acknowledged; "
                    "they are sent when it answers, also after a restart"
                )
    return lines


def summary_text(summary: dict[str, Any]) -> str:
    """The whole text summary, failures last."""
    lines = [
        f"graph {summary['graph']}: {summary['frames_out']} frames in {summary['duration_s']} s "
        f"({summary['fps']} fps), latency {format_percentiles(summary.get('latency_ms'))}"
    ]
    streams = summary["streams"]
    lines += [stream_line(sid, s) for sid, s in streams.items()]
    nodes = summary["nodes"]
    lines += [source_line(nid, n) for nid, n in nodes.items() if nid in streams]
    lines += [node_line(nid, n) for nid, n in nodes.items() if nid not in streams]
    return "\n".join(lines + failure_lines(summary))
