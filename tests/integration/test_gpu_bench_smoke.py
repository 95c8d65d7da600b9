"""loadtests/gpu_bench.py's plumbing on the CPU: a GPU machine's minutes are too dear to find a
typo there. --cpu-smoke runs the same windows, processes and report with CPU operators;
--rehearse runs the GPU graph itself with the GPU simulated (loadtests/gpu_rehearsal.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, mode: str) -> dict[str, Any]:
    """gpu_bench.py in `mode` with 3 streams, in one and in two processes; its JSON report."""
    args = ["--streams", "3", "--processes", "1,2", "--seconds", "4", "--warmup", "1"]
    paths = ["--out", str(tmp_path), "--clip-dir", str(tmp_path / "clips")]
    result = subprocess.run(
        [sys.executable, "loadtests/gpu_bench.py", mode, *args, *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((tmp_path / "gpu_bench.json").read_text())
    return report


def test_gpu_bench_plumbing_runs_in_one_and_in_two_processes(tmp_path: Path) -> None:
    report = bench(tmp_path, "--cpu-smoke")
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
        assert stacks["samples"] > 40  # every 20 ms over a 3 s window: 150 if never held up
        assert stacks["top"], stacks
        assert any("operators/" in t["stack"] or "engine/" in t["stack"] for t in stacks["top"])
    assert len(runs["3x2p"]["per_process"]) == 2


def test_the_rehearsal_runs_the_gpu_graph_with_real_detections_and_tracks(tmp_path: Path) -> None:
    """The GPU graph on this CPU: NVDEC, preprocess and the model simulated, postprocess,
    tracking and events real, fed CenterFace's recorded outputs for the clip's photo."""
    report = bench(tmp_path, "--rehearse")
    assert report["rehearsal"]["simulated_times_us"]["decode_us"] > 0
    runs = report["graph"]
    assert sorted(runs) == ["3x1p", "3x2p"]
    for key, run in runs.items():
        assert "error" not in run, (key, run)
        assert run["total_fps"] > 45  # three 30 fps 1080p streams; the host work is small
        assert run["decode_ceiling_fps"] == report["ceiling"]["3"]["fps"]  # the simulated NVDEC
        assert report["ceiling"]["3"]["simulated"] is True
        events = run["events"]
        assert events["by_type"]["detections"] > 100
        assert events["faces"] > events["by_type"]["detections"]  # the photo has faces
        assert events["tracked_faces"] > 0  # tracks were confirmed: tracking ran on real boxes
        assert "track.start" in events["by_type"]
        assert run["cpu_cores_used"] > 0
    busy = [runs["3x1p"]["simulated_device_busy_s"]]
    busy += [p["simulated_device_busy_s"] for p in runs["3x2p"]["per_process"]]
    for b in busy:
        assert min(b.values()) > 0  # every process booked NVDEC and the SMs
