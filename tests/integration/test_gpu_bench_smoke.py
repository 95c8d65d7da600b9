"""loadtests/gpu_bench.py's plumbing on the CPU: a GPU machine's minutes are too dear to find a
typo there. --cpu-smoke runs the same windows, processes and report with CPU operators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_plumbing_runs_in_one_and_in_two_processes(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "loadtests/gpu_bench.py",
            "--cpu-smoke",
            "--streams",
            "3",
            "--processes",
            "1,2",
            "--seconds",
            "4",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
            "--clip-dir",
            str(tmp_path / "clips"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    runs = report["graph"]
    assert sorted(runs) == ["3x1p", "3x2p"]
    for key, run in runs.items():
        assert "error" not in run, (key, run)
        assert run["streams"] == 3
        assert run["processes"] == int(key[-2])
        assert run["total_fps"] > 30  # three 30 fps streams of 360p: far below what the CPU can do
        assert run["latency_ms"]["p95"] is not None
        assert "_raw" not in run
        starvation = run["starvation_ms"] if key == "3x1p" else run["starvation_ms_worst_process"]
        assert starvation["gil_wait"]["p50"] is not None
    for proc in [runs["3x1p"], *runs["3x2p"]["per_process"]]:  # each process says where its threads were
        stacks = proc["hot_stacks"]
        assert stacks["samples"] > 50  # every 5 ms over a 3 s window
        assert stacks["top"], stacks
        assert any("operators/" in t["stack"] or "engine/" in t["stack"] for t in stacks["top"])
    assert len(runs["3x2p"]["per_process"]) == 2
