"""loadtests/host_budget.py runs end to end on real inputs (a 1080p H.264 clip, CenterFace's own
outputs) and its figures add up: the figure the GPU issue's process count is planned from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_host_budget_measures_every_stage_and_sums_them(tmp_path: Path) -> None:
    out = tmp_path / "budget.json"
    cmd = [
        sys.executable,
        "loadtests/host_budget.py",
        "--frames",
        "100",
        "--streams",
        "64",
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    fig = json.loads(out.read_text())
    stages = fig["us_per_frame"]
    assert set(stages) == {"demux", "postprocess", "track", "events", "hops"}
    assert all(v > 0 for v in stages.values())
    assert fig["faces_per_frame"] >= 1  # the photo's face is found: postprocess and track saw boxes
    assert fig["total_us_per_frame"] == pytest.approx(sum(stages.values()), abs=0.5)
    assert fig["budget_us_per_frame"] == pytest.approx(1e6 / (64 * 30), abs=0.1)
    assert fig["ratio_to_budget"] == pytest.approx(
        fig["total_us_per_frame"] / fig["budget_us_per_frame"], abs=2e-3
    )
    per_core = 1e6 / fig["total_us_per_frame"]
    assert fig["processes_at_full_core"] == -(-64 * 30 // per_core)
