"""loadtests/bench_digest.py: the GPU goal's verdict and one readable line per graph run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests.bench_digest import digest, main, meets_goal


def run(streams: int = 64, held: int = 64, p95: float = 120.0, ratio: float = 0.99) -> dict[str, Any]:
    return {
        "streams": streams,
        "processes": 4,
        "streams_realtime": held,
        "total_fps": held * 30.0,
        "latency_ms": {"p50": 80.0, "p95": p95, "p99": p95 + 10},
        "ratio_full_to_ceiling": round(ratio * 0.77, 3),
        "ratio_full_to_min_offered_ceiling": ratio,
        "drops_total": 0,
        "cpu_cores_used": 2.4,
        "gpu_memory_mib": {"nvidia_smi_used": 14000},
        "events": {"tracked_faces": 9000},
        "stages_ms": {
            "decode": {"queue_wait_ms": {"p95": 2.0}, "work_ms": {"p95": 5.0}},
            "detect": {"queue_wait_ms": {"p95": 20.0}, "work_ms": {"p95": 30.0}},
        },
    }


@pytest.mark.parametrize(
    ("figures", "met"),
    [
        (run(), True),
        (run(held=63), False),  # one stream below real time
        (run(p95=150.0), False),  # the bound is strict
        (run(ratio=0.74), False),
        (run(streams=32, held=32), False),  # too few streams to count
        (run(streams=96, held=96, p95=140.0), True),
        ({"skipped": "time budget", "streams": 64}, False),
    ],
)
def test_the_goal_needs_64_held_under_150_ms_at_75_percent(figures: dict[str, Any], met: bool) -> None:
    assert meets_goal(figures) is met


def test_lines_name_the_slowest_stages_and_the_verdict_names_the_run() -> None:
    report = {"ceiling": {"64": {"fps": 2500.0}}, "graph": {"64": run(), "96": {"skipped": "time budget"}}}
    lines = digest([("torch", report), ("triton", {"graph": {"64": run(held=60)}})])
    assert lines[0] == "torch decode ceiling fps: 64 streams 2500.0"
    for figure in ("held 64/64", "p50/p95 80.0/120.0 ms", "gpu 14000 MiB", "tracked faces 9000"):
        assert figure in lines[1]
    assert lines[1].endswith("p95 wait+work ms: detect 20+30, decode 2+5")  # slowest first
    assert lines[2] == "torch 96: time budget"
    assert lines[-1] == "GOAL MET by torch 64"
    assert digest([("triton", {"graph": {"64": run(held=60)}})])[-1].startswith("goal not met")


def test_missing_and_broken_reports_are_named_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "bench-torch" / "gpu_bench.json"
    good.parent.mkdir()
    good.write_text(json.dumps({"infer": "torch", "graph": {"64": run()}}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main([str(tmp_path / "none.json"), str(broken), str(good)]) == 0
    out = capsys.readouterr().out
    assert "none.json: no report" in out
    assert "broken.json: unreadable JSON" in out
    assert "GOAL MET by torch 64" in out
