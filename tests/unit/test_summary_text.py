"""The text summary `framegraph run` prints: readable numbers, sources as sources, failures last."""

from __future__ import annotations

from typing import Any

from engine.summary_text import format_percentiles, summary_text

NO_SAMPLES = {"p50": None, "p95": None, "p99": None}


def node(n_in: int, n_out: int, **extra: Any) -> dict[str, Any]:
    return {"in": n_in, "out": n_out, "dropped": 0, "dropped_by_reason": {}, "errors": 0} | extra


def summary(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "graph": "g",
        "duration_s": 2.0,
        "frames_out": 60,
        "fps": 30.0,
        "latency_ms": {"p50": 12.3, "p95": 15.0, "p99": 16.25},
        "streams": {
            "cam0": {
                "status": "ok",
                "frames_in": 60,
                "frames_out": 60,
                "frames_out_at": "sink",
                "dropped": 60,
                "dropped_by_node": {"events": 60},
                "fps": 29.5,
                "latency_ms": {"p50": 12.3, "p95": 15.0, "p99": 16.25},
            }
        },
        "nodes": {
            "cam0": node(0, 60),
            "sink": node(60, 60),
            "events": node(60, 0, dropped=60, dropped_by_reason={"error:KeyError": 60}),
        },
    }
    return base | over


def test_percentiles_read_as_milliseconds_or_n_a() -> None:
    assert (
        format_percentiles({"p50": 12.3, "p95": 15.0, "p99": 16.25}) == "p50 12.3 ms, p95 15 ms, p99 16.25 ms"
    )
    assert format_percentiles(NO_SAMPLES) == "n/a"
    text = summary_text(summary(latency_ms=NO_SAMPLES))
    assert "latency n/a" in text.splitlines()[0]
    assert "{" not in text
    assert "None" not in text


def test_sources_are_listed_as_sources_and_stream_counts_are_labelled() -> None:
    lines = summary_text(summary()).splitlines()
    assert "  source cam0: 60 frames emitted" in lines
    assert not [line for line in lines if line.startswith("  node cam0")]
    stream = next(line for line in lines if line.startswith("  stream cam0"))
    assert "60 frames read, 60 out at sink, dropped 60 (events 60)" in stream


def test_failures_close_the_summary() -> None:
    failed = summary()
    failed["streams"]["cam1"] = failed["streams"]["cam0"] | {
        "status": "failed",
        "error": "cam1: cannot open x.mp4: No such file or directory",
    }
    lines = summary_text(failed).splitlines()
    assert lines[-2] == "failed streams: cam1 (cam1: cannot open x.mp4: No such file or directory)"
    assert lines[-1] == "failing nodes: events (failed all 60 items it got: error:KeyError 60)"
    assert "[failed]" in next(line for line in lines if line.startswith("  stream cam1"))


def test_kafka_delivery_counters_are_shown() -> None:
    s = summary()
    s["nodes"]["events"] = node(
        60, 60, events={"accepted": 60, "sent": 55, "spooled": 5, "replayed": 0, "failed": 0}
    )
    line = next(line for line in summary_text(s).splitlines() if line.startswith("  node events"))
    assert "kafka sent 55 / spooled 5" in line
    assert "replayed" not in line
    assert "kafka" not in next(
        line for line in summary_text(s).splitlines() if line.startswith("  node sink")
    )


def test_events_left_in_the_kafka_spool_are_said_at_the_end() -> None:
    s = summary()
    s["nodes"]["events"] = node(66, 66, events={"accepted": 66, "sent": 0, "spooled": 66, "replayed": 0})
    assert summary_text(s).splitlines()[-1] == (
        "kafka spool: node events holds 66 event(s) the broker has not acknowledged; "
        "they are sent when it answers, also after a restart"
    )
    s["nodes"]["events"]["events"].update(spooled=10, replayed=10, sent=56)  # all caught up
    assert "kafka spool" not in summary_text(s)


def test_resends_and_redaction_treatments_are_said_in_words() -> None:
    s = summary()
    s["nodes"]["events"] = node(
        60, 60, events={"accepted": 60, "sent": 60, "spooled": 5, "replayed": 5, "failed": 3}
    )
    s["nodes"]["sink"] = node(60, 60, events={"redaction_redacted": 50, "redaction_covered": 10})
    lines = summary_text(s).splitlines()
    kafka = next(line for line in lines if line.startswith("  node events"))
    assert "kafka sent 60 / spooled 5 (replayed 5, unacknowledged sends (spooled, resent) 3)" in kafka
    redact = next(line for line in lines if line.startswith("  node sink"))
    assert "redaction redacted 50, covered 10" in redact
