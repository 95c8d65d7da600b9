"""`framegraph run --processes K`: one graph over several processes, one merged summary."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli import framegraph


def graph_with_sources(clip: Path, n: int, tmp_path: Path) -> Path:
    sources = "\n".join(f'  - {{id: cam{i}, url: "{clip}"}}' for i in range(n))
    path = tmp_path / "many.yaml"
    path.write_text(f"""\
name: many
sources:
{sources}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources], config: {{thread_type: slice}}}}
  - {{id: out, op: sink.jsonl, inputs: [decode], config: {{path: "frames.jsonl", mode: frames}}}}
""")
    return path


def test_four_streams_over_two_processes_lose_nothing_and_merge(clip_720p: Path, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    result = framegraph(
        "run",
        graph_with_sources(clip_720p, 4, tmp_path),
        "--processes",
        "2",
        "--max-frames",
        "30",
        "--output",
        tmp_path,
        "--summary-json",
        summary_path,
        "--progress-interval-s",
        "0",
    )
    assert result.returncode == 0, result.stderr
    assert "2 processes, sources per process: 2, 2" in result.stderr
    summary = json.loads(summary_path.read_text())
    assert sorted(summary["streams"]) == ["cam0", "cam1", "cam2", "cam3"]
    assert all(s["frames_out"] == 30 for s in summary["streams"].values())
    assert summary["frames_out"] == 120
    assert summary["nodes"]["decode"]["out"] == 120
    assert len(summary["processes"]) == 2
    assert sorted(sorted(p["streams"]) for p in summary["processes"]) == [["cam0", "cam2"], ["cam1", "cam3"]]
    # both processes appended to one file: every line whole, every frame once
    lines = (tmp_path / "frames.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    seen = sorted((r["stream_id"], r["seq"]) for r in records)
    assert seen == sorted((f"cam{i}", s) for i in range(4) for s in range(30))


def test_more_processes_than_sources_runs_one_per_source(clip_720p: Path, tmp_path: Path) -> None:
    result = framegraph(
        "run",
        graph_with_sources(clip_720p, 2, tmp_path),
        "--processes",
        "5",
        "--max-frames",
        "5",
        "--output",
        tmp_path,
        "--progress-interval-s",
        "0",
    )
    assert result.returncode == 0, result.stderr
    assert "2 processes, sources per process: 1, 1" in result.stderr
    assert "graph many: 10 frames" in result.stdout


def test_ctrl_c_stops_every_process_and_still_reports(clip_720p: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    graph = graph_with_sources(clip_720p, 2, tmp_path)
    graph.write_text(
        graph.read_text().replace(f'url: "{clip_720p}"', f'url: "{clip_720p}", config: {{loop: true}}')
    )
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(graph),
            "--processes",
            "2",
            "--output",
            str(tmp_path),
            "--summary-json",
            str(summary_path),
            "--progress-interval-s",
            "0",
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    frames = tmp_path / "frames.jsonl"
    while time.monotonic() < deadline:  # until both processes have written frames
        text = frames.read_text() if frames.exists() else ""
        if '"cam0"' in text and '"cam1"' in text:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    assert sorted(summary["streams"]) == ["cam0", "cam1"]
    assert all(s["frames_out"] > 0 for s in summary["streams"].values())
    assert len(summary["processes"]) == 2
