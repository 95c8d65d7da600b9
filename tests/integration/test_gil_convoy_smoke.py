"""loadtests/gil_convoy.py runs on the real CenterFace and reports both runtimes beside their
baselines (the figure behind infer.torch's `runtime: torchscript` default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import device

ROOT = Path(__file__).resolve().parents[2]
CENTERFACE = ROOT / "triton_models/centerface/1/centerface.onnx"


@pytest.mark.skipif(
    not all(device.installed(m) for m in ("torch", "onnx", "onnx2torch")),
    reason="torch/onnx/onnx2torch missing",
)
def test_gil_convoy_reports_each_runtime_alone_and_beside_python_threads(tmp_path: Path) -> None:
    if not CENTERFACE.is_file():
        pytest.skip("centerface.onnx missing (scripts/setup_models.py)")
    out = tmp_path / "convoy.json"
    cmd = [sys.executable, "loadtests/gil_convoy.py", "--threads", "1", "--seconds", "0.5", "--size", "64x64"]
    done = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["input"] == [1, 3, 64, 64]
    for runtime in ("eager", "torchscript"):
        row = report[runtime]
        assert row["alone_fps"] > 0
        assert row["with_1_threads_fps"] > 0
        assert row["ratio_1_threads"] == pytest.approx(
            row["with_1_threads_fps"] / row["alone_fps"], rel=0.02, abs=2e-3
        )
        assert runtime in done.stdout
    for executor in ("optimizing", "plain"):  # first and next pass at each new batch size 1..8
        rows = report[f"new_batch_size_ms_{executor}"]
        assert [r[0] for r in rows] == list(range(1, 9))
        assert all(r[1] > 0 and r[2] > 0 for r in rows)
