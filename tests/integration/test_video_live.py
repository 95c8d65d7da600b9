"""Redacted video out as a user gets it: `framegraph run` of the face-redaction graph, and an
RTSP push (sink.rtsp) to a real RTSP server's RECORD mount (scripts/rtsp_server.py), read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import GraphConfigError
from engine.golden_clip import read_frames
from engine.leakcheck import CenterFaceOnnx, check_against_input
from engine.testing import plan_from_yaml, run_graph
from tests.integration.conftest import RtspServer

ROOT = Path(__file__).resolve().parents[2]


def test_framegraph_run_puts_the_redacted_video_and_events_in_output(
    triton_url: str, clip_720p: Path, tmp_path: Path
) -> None:
    out = tmp_path / "redacted"
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "graphs/face_redaction.yaml",
         "--set", f"sources.0.url={clip_720p}", "--output", str(out), "--progress-interval-s", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "FG_TRITON_GRPC_URL": triton_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    frames = read_frames(out / "cam0.mp4")
    assert len(frames) == 60
    assert frames[0].shape == (720, 1280, 3)
    events = [json.loads(line) for line in (out / "face_redaction.jsonl").read_text().splitlines()]
    treatments = [e["treatment"] for e in events if e["type"] == "redaction"]
    assert treatments == ["redacted"] * 60  # the astronaut is in every frame
    # the clip's backdrop is a blurred photo of a face: judge only the faces the input shows
    report = check_against_input(CenterFaceOnnx(), read_frames(clip_720p), frames, 0.3)
    assert report.leaked_frames == 0, report.where[:5]


def push_graph(clip: Path, url: str, sink_config: str = "") -> str:
    return f"""\
name: push_test
sources:
  - {{id: cam0, url: "{clip}"}}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: push, op: sink.rtsp, inputs: [decode], queue: {{size: 128}}, config: {{url: "{url}"{sink_config}}}}}
"""


async def test_sink_rtsp_pushes_to_a_record_mount_and_the_server_gets_the_video(
    tmp_path: Path, clip_720p: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    server = RtspServer(media, record_mounts=("rec",))
    server.start()
    try:
        _, summary = await run_graph(
            push_graph(clip_720p, server.url("rec"), ", require_redaction: false"), output_dir=tmp_path
        )
        time.sleep(0.5)  # noqa: ASYNC251 (the server finishes writing the session)
    finally:
        server.kill()
    push = summary["nodes"]["push"]
    assert push["dropped"] == 0
    assert push["events"]["rtsp_connects"] == 1
    received = read_frames(media / "rec-000.ts")
    sent = read_frames(clip_720p)
    assert 55 <= len(received) <= 60  # RTSP RECORD may lose the frames in flight at teardown
    assert received[0].shape == (720, 1280, 3)
    diff = np.abs(received[10].astype(np.int16) - sent[10].astype(np.int16)).mean()
    assert diff < 8, diff  # the same picture, re-encoded twice


async def test_sink_rtsp_refuses_unredacted_frames_and_never_connects(
    tmp_path: Path, clip_720p: Path
) -> None:
    direct = push_graph(clip_720p, "rtsp://127.0.0.1:9/none")
    with pytest.raises(GraphConfigError, match="add a redact node before it"):
        plan_from_yaml(direct)  # validation sees the missing redact node ...
    # ... and where it cannot (an operator that declares nothing in between), the sink refuses
    opaque = direct.replace(
        "  - {id: push, op: sink.rtsp, inputs: [decode]",
        "  - {id: opaque, op: test.slow, inputs: [decode], config: {delay_ms: 0}}\n"
        "  - {id: push, op: sink.rtsp, inputs: [opaque]",
    )
    _, summary = await run_graph(opaque, output_dir=tmp_path)
    push = summary["nodes"]["push"]
    assert push["dropped_by_reason"] == {"unredacted": 60}
    assert "events" not in push  # no connection was tried
