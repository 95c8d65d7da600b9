"""Dealing sources to processes and merging their summaries (engine/shards.py)."""

from __future__ import annotations

from typing import Any

from engine.shards import deal_sources, merge_summaries


def test_sources_are_dealt_round_robin_and_never_to_idle_processes() -> None:
    assert deal_sources(5, 2) == [[0, 2, 4], [1, 3]]
    assert deal_sources(2, 8) == [[0], [1]]
    assert deal_sources(3, 1) == [[0, 1, 2]]


def summary(streams: dict[str, int], node: dict[str, Any], latency_p95: float | None) -> dict[str, Any]:
    return {
        "graph": "g",
        "duration_s": 10.0 + len(streams),
        "frames_out": sum(streams.values()),
        "fps": float(sum(streams.values())) / 10,
        "latency_ms": {"p50": 1.0, "p95": latency_p95, "p99": latency_p95},
        "streams": {sid: {"frames_out": n} for sid, n in streams.items()},
        "nodes": {"detect": node},
    }


def test_merged_summary_adds_counts_and_keeps_the_worst_percentiles() -> None:
    a = summary(
        {"cam0": 100, "cam2": 50},
        {
            "in": 150,
            "out": 150,
            "dropped": 2,
            "errors": 0,
            "busy_s": 1.5,
            "dropped_by_reason": {"latency": 2},
            "dropped_by_stream": {"cam0": {"latency": 2}},
            "batches": 10,
            "mean_batch": 15.0,
            "events": {"degraded_frames": 3},
            "queue_wait_ms": {"p50": 1.0, "p95": 9.0, "p99": 12.0},
            "work_ms": {"p50": 5.0, "p95": 6.0, "p99": 7.0},
        },
        40.0,
    )
    b = summary(
        {"cam1": 80},
        {
            "in": 80,
            "out": 79,
            "dropped": 1,
            "errors": 1,
            "busy_s": 0.5,
            "dropped_by_reason": {"error:ValueError": 1},
            "dropped_by_stream": {"cam1": {"error:ValueError": 1}},
            "batches": 30,
            "mean_batch": 3.0,
            "queue_wait_ms": {"p50": 2.0, "p95": 3.0, "p99": None},
            "work_ms": {"p50": 1.0, "p95": 8.0, "p99": 9.0},
        },
        None,
    )
    merged = merge_summaries("g", [a, b])
    assert merged["frames_out"] == 230
    assert merged["fps"] == 23.0
    assert merged["duration_s"] == 12.0
    assert sorted(merged["streams"]) == ["cam0", "cam1", "cam2"]
    assert merged["latency_ms"] == {"p50": 1.0, "p95": 40.0, "p99": 40.0}
    node = merged["nodes"]["detect"]
    assert (node["in"], node["out"], node["dropped"], node["errors"], node["busy_s"]) == (230, 229, 3, 1, 2.0)
    assert node["dropped_by_reason"] == {"latency": 2, "error:ValueError": 1}
    assert set(node["dropped_by_stream"]) == {"cam0", "cam1"}
    assert node["batches"] == 40
    assert node["mean_batch"] == 6.0  # (10 * 15 + 30 * 3) / 40
    assert node["events"] == {"degraded_frames": 3}
    assert node["queue_wait_ms"] == {"p50": 2.0, "p95": 9.0, "p99": 12.0}
    assert node["work_ms"] == {"p50": 5.0, "p95": 8.0, "p99": 9.0}
    assert merged["processes"] == [a, b]
