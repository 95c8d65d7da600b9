"""The short runs of loadtests/reliability: throughput, soak and chaos, each against real servers.

Each mode runs as `python -m loadtests.reliability MODE --short` (its own process: the soak
measures that process's RSS) with private RTSP servers, a private Triton and a private broker
on loopback; the assertions read its report.json. Together they take about 2.5 minutes on a
quiet 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.samples import make_clip
from loadtests.reliability.faults import Fault, recovery_s
from loadtests.reliability.leaks import check_videos
from loadtests.reliability.report import floors, slope_per_hour
from tests.integration.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


def run_mode(mode: str, out: Path, *args: str, timeout_s: float = 240) -> dict[str, Any]:
    """Run one short mode; its report (the run's own output is in out/stdout.txt on failure)."""
    cmd = [sys.executable, "-m", "loadtests.reliability", mode, "--short", "--out", str(out), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    (out / "stdout.txt").write_text(done.stdout + done.stderr)
    report_path = out / "report.json"
    assert report_path.exists(), f"no report; exit {done.returncode}: {(done.stdout + done.stderr)[-3000:]}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == (1 if failed else 0), done.stderr[-3000:]
    for name in report["plots"]:
        assert (out / name).read_bytes().startswith(PNG)
    return report


def check(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The report's check whose name starts with `prefix`, asserted to have passed."""
    found = [c for c in report["checks"] if c["name"].startswith(prefix)]
    assert found, f"no check {prefix!r}"
    for c in found:
        assert c["ok"], c
    return found[0]


def no_event_lost(report: dict[str, Any]) -> dict[str, Any]:
    ev = report["events"]
    assert ev["accepted"] > 0
    assert ev["consumer"]["caught_up"]
    assert ev["consumed_unique"] + ev["lost_in_broker_restart"] == ev["accepted"]
    assert ev["lost"] == 0
    assert ev["lost_in_broker_restart"] == 0  # the broker is killed only once the consumer caught up
    if ev["spooled"]:
        assert ev["replayed"] >= ev["spooled"]  # what went to the spool was replayed from it
    check(report, "no event lost")
    return ev


def no_unredacted_frame(report: dict[str, Any]) -> None:
    red = report["redaction"]
    written = red["video_sink"]["out"]
    assert written > 0
    assert red["video_sink"].get("unredacted", 0) == 0
    treated = sum(v for k, v in red["treatments"].items() if k.startswith("redaction_"))
    assert written <= treated
    leaks = red["leakcheck"]
    assert leaks["files"]
    for f in leaks["files"].values():  # every file decodes, and every k-th frame of it was judged
        assert f["frames"] > 0
        assert f["checked"] == -(-f["frames"] // f["every"])
        assert f["every"] == leaks["every"]  # short runs: no thinning
    assert leaks["leaked_frames"] == 0, leaks["files"]


def test_recovery_is_measured_from_the_faults_end_to_the_first_second_at_25_fps() -> None:
    bins = [3] * 100 + [0] * 20 + [3] * 100  # 30 fps per 0.1 s bin; nothing from 10 s to 12 s
    assert recovery_s(bins, 12.0, 10.0) == pytest.approx(0.9)  # 9 bins of 3 frames: 27 >= 25
    assert recovery_s(bins, 5.0, 10.0) == 0.0  # never degraded: back at once
    assert recovery_s(bins[:125], 12.0, 10.0) is None  # the stream never came back
    fault = Fault("camera_stall", 10.0, 12.0, ["cam0"])
    fault.measure("cam0", bins, 10.0)
    assert fault.baseline_fps["cam0"] == 30.0
    assert fault.min_fps["cam0"] == 0.0
    assert fault.as_dict()["max_recovery_s"] == pytest.approx(0.9)
    slow = [2] * 100 + [0] * 20 + [2] * 100  # a machine that other jobs load: 20 fps before and after
    fault = Fault("camera_stall", 10.0, 12.0, ["cam0"])
    fault.measure("cam0", slow, 10.0)
    out = fault.as_dict()
    assert out["recovery_s"]["cam0"] is None  # never at 25 fps ...
    assert out["below_real_time_before"]
    assert out["max_recovery_to_baseline_s"] == pytest.approx(0.9)  # ... but back at its own 18 fps
    edge = ([3] * 6 + [2] * 4) * 10 + [0] * 20 + ([3] * 4 + [2] * 6) * 10  # 26 fps before, 24 after
    fault = Fault("camera_stall", 10.0, 12.0, ["cam0"])
    fault.measure("cam0", edge, 10.0)
    out = fault.as_dict()
    assert out["recovery_s"]["cam0"] is None  # 24 fps: never at 25 ...
    assert out["below_real_time_before"]  # ... but 26 fps before is below real time (28) too
    assert out["max_recovery_to_baseline_s"] is not None


def test_rss_growth_is_read_from_the_floors_of_the_saw_tooth() -> None:
    t = [i * 0.5 for i in range(480)]  # 4 minutes
    saw = [300 + 20 * ((x % 16) / 16) + x / 60 for x in t]  # +20 MB saw-tooth, +1 MB a minute
    ft, fy = floors(t, saw, 20.0)
    assert len(fy) == 11
    assert slope_per_hour(ft, fy) == pytest.approx(60, rel=0.15)


def test_the_leak_judge_finds_the_faces_of_an_unredacted_camera(tmp_path: Path) -> None:
    """The runner's leak check is not blind: the camera's own clip, unredacted, leaks in every frame."""
    make_clip(tmp_path / "cam0.mp4", 640, 360, seconds=1)
    report = check_videos(tmp_path, every=3)
    assert report["checked"] == 10
    assert report["leaked_frames"] == 10


def test_throughput_short_finds_the_streams_held_at_real_time(tmp_path: Path) -> None:
    report = run_mode("throughput", tmp_path, "--decode-only")
    steps = report["throughput"]["steps"]
    assert [s["n"] for s in steps][:1] == [1]
    for s in steps:
        assert len(s["fps"]) == s["n"]
        assert s["held"] == (s["min_fps"] >= 28 and not any(s["drops_after_warmup"].values()))
    # 640x360 decode-only on two cores: two live cameras are far below its ceiling
    assert report["throughput"]["largest_n_held"] == 2, steps
    assert steps[0]["fps"]["cam0"] == pytest.approx(30, abs=1.5)  # real time: the camera's own rate


def test_soak_short_loses_no_event_writes_no_face_and_keeps_its_memory(tmp_path: Path) -> None:
    report = run_mode("soak", tmp_path)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    no_event_lost(report)
    no_unredacted_frame(report)
    fig = report["soak"]["figures"]
    assert fig["measured_s"] >= 20
    assert fig["rss_growth_mb_in_run"] <= 64  # fitted over the run after warm-up
    assert fig["fds"][1] - fig["fds"][0] <= 8
    assert fig["threads"][1] - fig["threads"][0] <= 8
    assert fig["latency_p95_ms_first_third"] is not None
    rows = (tmp_path / "timeline.jsonl").read_text().splitlines()
    assert len(rows) >= 30  # twice a second
    assert all(v > 0 for v in report["soak"]["fps_after_warmup"].values())


def test_chaos_short_every_stream_recovers_from_every_fault(tmp_path: Path) -> None:
    report = run_mode("chaos", tmp_path)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    faults = report["chaos"]["faults"]
    kinds = {f["kind"] for f in faults}
    # corrupt0's decode errors are measured only when a run of them falls between other faults
    # (whose reconnects log decode errors too); a short run may have none there: it says so
    unmeasured = {s["kind"] for s in report["chaos"]["skipped"] if "overlapped another fault" in s["why"]}
    assert kinds | unmeasured >= {
        "rtsp_restart",
        "camera_stall",
        "broker_down",
        "triton_restart",
        "corrupt_packets",
        "stream_churn",
    }
    for f in (
        f for f in faults if f["kind"] != "stream_churn"
    ):  # back at 25 fps within 10 s (or, when the machine held the streams below real time,
        # 28 fps, before the fault, back at 90 % of the stream's own rate within 10 s: reaching 25 fps
        # then depends on the machine, not on the recovery; the report flags it)
        at_25_fps = f["recovered"] and f["max_recovery_s"] <= 10
        to_own_rate = f["max_recovery_to_baseline_s"] is not None and f["max_recovery_to_baseline_s"] <= 10
        assert at_25_fps or (f["below_real_time_before"] and to_own_rate), f
    by_kind = {f["kind"]: f for f in faults}
    # the faults really happened: the streams they hit went down, and came back
    rtsp = by_kind["rtsp_restart"]  # a dip, or at least the broken connection (read-ahead can hide the dip)
    assert rtsp["min_fps"]["corrupt0"] < 25 or rtsp["extra"]["disconnects"]["corrupt0"] >= 1, rtsp
    assert by_kind["camera_stall"]["min_fps"]["stall0"] < 25
    assert by_kind["triton_restart"]["min_fps"]["stall0"] < 25  # frames covered while Triton was away
    broker = by_kind["broker_down"]
    assert "shortened from 30 s" in broker["note"]
    assert broker["extra"]["delivery_recovery_s"] is not None  # all accepted by the restart was read
    churn = by_kind["stream_churn"]["extra"]
    # cameras came and went; how fast an added camera reaches 25 fps is gated by the full chaos
    # run only (a short run on 2 shared cores leaves too few undisturbed cycles to judge)
    assert churn["cycles"] >= 2
    assert churn["max_remove_s"] is not None
    assert churn["max_remove_s"] <= 5
    samples = report["chaos"]["ffmpeg_error_samples"]
    assert any("libav.h264" in s for s in samples), samples  # the corrupted bytes reached the decoder
    assert any(s["kind"] == "redis_restart" for s in report["chaos"]["skipped"])
    no_event_lost(report)
    no_unredacted_frame(report)
    red = report["redaction"]["treatments"]
    assert red.get("redaction_covered", 0) > 0  # Triton's restart: frames covered whole, not leaked
