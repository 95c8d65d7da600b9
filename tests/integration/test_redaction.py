"""The face-redaction job against real parts: Triton, H.264 in and out, CenterFace as the judge.

- Leak test: golden clips (real photos of faces moving, perturbed) through graphs/face_redaction.yaml;
  every frame of each redacted MP4 is decoded back and CenterFace (onnxruntime, in-process)
  must find no face at the graph's threshold.
- Fail closed: Triton killed mid-run; the frames of the outage are covered (or withheld) and counted.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.frame import Frame
from engine.golden import PERTURBATIONS
from engine.golden_clip import moving_faces, read_frames, write_clip
from engine.leakcheck import CenterFaceOnnx, check_frames, detection_rate
from engine.runtime import RunOptions, Runtime
from engine.testing import CollectOperator, plan_from_yaml
from tests.integration.conftest import TritonInstance

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "face_redaction.yaml"
THRESHOLD = 0.3  # the graph's postprocess threshold: the leak check looks as hard as the job did
CLIP_FRAMES = 30


def redaction_graph(
    triton_url: str, sources: dict[str, Path], detect: dict[str, Any] | None = None
) -> dict[str, Any]:
    """graphs/face_redaction.yaml with these sources (id -> clip) and Triton URL."""
    data: dict[str, Any] = yaml.safe_load(GRAPH.read_text())
    data["sources"] = [{"id": sid, "url": str(path)} for sid, path in sources.items()]
    for node in data["nodes"]:
        if node["id"] == "detect":
            node["config"].update({"url": triton_url, **(detect or {})})
    return data


def node(data: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in data["nodes"] if n["id"] == node_id)


@pytest.fixture(scope="module")
def centerface() -> CenterFaceOnnx:
    return CenterFaceOnnx()


@pytest.fixture(scope="module")
def golden_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One clip per perturbation: 3 faces (40..160 px high) moving over a 960x540 backdrop."""
    folder = tmp_path_factory.mktemp("golden-clips")
    return {
        kind: write_clip(folder / f"{kind}.mp4", moving_faces(seed=i, frames=CLIP_FRAMES), kind)
        for i, kind in enumerate(PERTURBATIONS)
    }


async def test_redacted_golden_clips_leak_no_face(
    triton_url: str, golden_clips: dict[str, Path], centerface: CenterFaceOnnx, tmp_path: Path
) -> None:
    data = redaction_graph(triton_url, golden_clips)
    runtime = Runtime(plan_from_yaml(yaml.safe_dump(data)), RunOptions(output_dir=tmp_path))
    summary = await runtime.run()
    redact = summary["nodes"]["redact"]["events"]
    total = CLIP_FRAMES * len(golden_clips)
    assert redact.get("redaction_covered", 0) == 0  # Triton served every frame
    assert redact["redaction_redacted"] + redact.get("redaction_clean", 0) == total
    print(f"\nleak check, CenterFace threshold {THRESHOLD}, {CLIP_FRAMES} frames a clip")
    for kind, clip in golden_clips.items():
        before = detection_rate(centerface, read_frames(clip)[::3], THRESHOLD)
        frames = read_frames(tmp_path / f"{kind}.mp4")
        assert len(frames) == CLIP_FRAMES
        report = check_frames(centerface, frames, THRESHOLD)
        print(f"{kind:<10} frames with faces: input {before:.2f}, redacted {report.leak_rate:.2f}")
        assert before >= 0.9, f"{kind}: the input should show faces to hide"
        assert report.leaked_frames == 0, f"{kind}: faces found in the redacted output: {report.where[:5]}"
    events = [json.loads(line) for line in (tmp_path / "face_redaction.jsonl").read_text().splitlines()]
    kinds = Counter(e["type"] for e in events)
    assert kinds["redaction"] == total  # every frame has its audit event
    assert kinds["track.start"] >= len(golden_clips) * 2


async def test_triton_killed_mid_run_frames_are_covered_or_withheld_and_counted(
    private_triton: TritonInstance, golden_clips: dict[str, Path], tmp_path: Path
) -> None:
    data = redaction_graph(
        private_triton.url,
        {"cam0": golden_clips["clean"]},
        {"timeout_s": 1.0, "retries": 1, "probe_interval_s": 0.5},
    )
    data["sources"][0]["config"] = {"loop": True, "realtime": True}
    node(data, "detect")["batch"] = {"max_batch": 2, "max_delay_ms": 10}
    node(data, "redact")["config"]["fill_color"] = [0, 0, 0]
    withhold = {**node(data, "redact"), "id": "redact_w"}
    withhold["config"] = {**withhold["config"], "on_unavailable": "withhold"}
    data["nodes"] += [
        withhold,
        {
            "id": "video_w",
            "op": "sink.file",
            "inputs": ["redact_w"],
            "config": {"path": "withheld_{stream}.mp4"},
        },
        {"id": "out", "op": "test.collect", "inputs": ["redact"], "queue": {"size": 512}},
    ]
    frames_in = 390  # 13 s at 30 fps: room to serve again after the restart, also on a loaded machine
    runtime = Runtime(
        plan_from_yaml(yaml.safe_dump(data)), RunOptions(max_frames=frames_in, output_dir=tmp_path)
    )
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(2.5)
    await asyncio.to_thread(private_triton, "kill")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(private_triton, "start")
    summary = await asyncio.wait_for(task, 90)

    degraded = summary["nodes"]["faces"]["events"]["degraded_frames"]
    assert degraded > 20
    cover = summary["nodes"]["redact"]["events"]
    assert cover["redaction_covered"] == degraded
    assert cover["redaction_redacted"] + cover.get("redaction_clean", 0) + degraded == frames_in
    held = summary["nodes"]["redact_w"]
    assert held["events"]["redaction_withheld"] == degraded  # each with its audit event ...
    assert summary["nodes"]["video_w"]["dropped_by_reason"] == {"redaction_withheld": degraded}  # unwritten

    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    frames: list[Frame] = out.items  # type: ignore[assignment]
    assert len(frames) == frames_in
    covered = [i for i, f in enumerate(frames) if f.meta["redaction"] == "covered"]
    assert len(covered) == degraded
    assert all(f.detections is not None and f.detections.degraded for f in (frames[i] for i in covered))
    assert all(not frames[i].image.any() for i in covered)  # every pixel filled
    assert frames[-1].meta["redaction"] != "covered"  # served again after the restart

    video = read_frames(tmp_path / "cam0.mp4")
    assert len(video) == frames_in  # covered frames are written, as covered
    assert all(int(video[i].max()) <= 12 for i in covered)  # black, give or take H.264
    assert len(read_frames(tmp_path / "withheld_cam0.mp4")) == frames_in - degraded


def test_leak_check_finds_the_faces_of_an_unredacted_clip(
    golden_clips: dict[str, Path], centerface: CenterFaceOnnx
) -> None:
    report = check_frames(centerface, read_frames(golden_clips["clean"])[:5], THRESHOLD)
    assert report.leaked_frames == 5  # the judge sees faces where they are not hidden
    assert report.max_score > 0.8
    assert np.isfinite(report.leak_rate)
