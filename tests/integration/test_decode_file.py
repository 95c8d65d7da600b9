"""Real H.264, made from a real photo, decoded end to end from files (good, corrupt, truncated)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np

from engine.samples import photo_cached, scene
from engine.testing import CollectOperator, run_graph


def decode_graph(url: Path | str, extra: str = "") -> str:
    return f"""\
name: decode_test
sources:
  - id: cam0
    url: {url}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]{extra}}}
  - {{id: out, op: test.collect, inputs: [decode], queue: {{size: 256}}}}
"""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


async def test_every_frame_decodes_in_order_and_matches_the_source_pictures(clip_720p: Path) -> None:
    runtime, summary = await run_graph(decode_graph(clip_720p))
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    frames = out.items
    assert [f.seq for f in frames] == list(range(60))
    backdrop = cv2.GaussianBlur(cv2.resize(photo_cached(), (1280, 720)), (0, 0), 12)
    for index in (0, 29, 59):
        image = frames[index].image  # type: ignore[union-attr]
        assert image.shape == (720, 1280, 3)
        assert psnr(image, scene(1280, 720, index, 30, backdrop)) > 30
    assert summary["streams"]["cam0"] == summary["streams"]["cam0"] | {
        "frames_in": 60,
        "frames_out": 60,
        "dropped": 0,
    }


async def test_bgr_output_is_rgb_reversed(clip_720p: Path) -> None:
    rgb_rt, _ = await run_graph(decode_graph(clip_720p), max_frames=1)
    bgr_rt, _ = await run_graph(decode_graph(clip_720p, ", config: {pixel_format: bgr24}"), max_frames=1)
    rgb = rgb_rt.operator("out").items[0].image  # type: ignore[attr-defined]
    bgr = bgr_rt.operator("out").items[0].image  # type: ignore[attr-defined]
    assert np.array_equal(rgb[:, :, ::-1], bgr)


async def test_corrupt_bytes_are_skipped_and_counted_and_the_stream_goes_on(
    clip_ts: Path, tmp_path: Path
) -> None:
    data = bytearray(clip_ts.read_bytes())
    rng = random.Random(7)
    for start in range(len(data) // 4, len(data) * 3 // 4, len(data) // 12):
        for i in range(start, start + 3000):
            data[i] = rng.randrange(256)
    broken = tmp_path / "corrupt.ts"
    broken.write_bytes(bytes(data))
    runtime, summary = await run_graph(decode_graph(broken))
    node = summary["nodes"]["decode"]
    frames = runtime.operator("out").items  # type: ignore[attr-defined]
    assert len(frames) > 30  # most of the clip survives
    assert summary["streams"]["cam0"]["frames_out"] == len(frames)
    # FFmpeg conceals the damage; the frames it flags corrupt are dropped and counted
    lost = node["dropped_by_reason"].get("corrupt_frame", 0) + node["dropped_by_reason"].get(
        "corrupt_packet", 0
    )
    assert lost > 0
    assert len(frames) + node["dropped_by_reason"].get("corrupt_frame", 0) <= 60
    assert all("corrupt" not in f.degraded for f in frames)
    kept_rt, kept = await run_graph(decode_graph(broken, ", config: {on_corrupt: keep}"))
    flagged = [f for f in kept_rt.operator("out").items if "corrupt" in f.degraded]  # type: ignore[attr-defined]
    assert len(flagged) == kept["nodes"]["decode"]["events"]["corrupt_frames_kept"] > 0


async def test_truncated_stream_ends_cleanly_with_the_frames_it_had(clip_ts: Path, tmp_path: Path) -> None:
    data = clip_ts.read_bytes()
    cut = tmp_path / "truncated.ts"
    cut.write_bytes(data[: len(data) // 2])
    runtime, _ = await run_graph(decode_graph(cut))
    frames = runtime.operator("out").items  # type: ignore[attr-defined]
    assert 15 < len(frames) < 45
    assert [f.seq for f in frames] == list(range(len(frames)))


async def test_unreadable_file_is_a_clear_error_not_a_hang(tmp_path: Path, caplog: object) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 4096)
    _, summary = await run_graph(decode_graph(junk))
    assert summary["streams"]["cam0"]["frames_out"] == 0
    assert summary["nodes"]["cam0"]["errors"] == 1
    _, summary = await run_graph(decode_graph(tmp_path / "missing.mp4"))
    assert summary["nodes"]["cam0"]["errors"] == 1


async def test_looped_file_paced_at_real_time(clip_ts: Path) -> None:
    graph = decode_graph(clip_ts).replace(
        "url: " + str(clip_ts), "url: " + str(clip_ts) + "\n    config: {loop: true, realtime: true}"
    )
    runtime, summary = await run_graph(graph, max_frames=75)
    frames = runtime.operator("out").items  # type: ignore[attr-defined]
    assert [f.seq for f in frames] == list(range(75))  # 60 frames, then the loop goes on
    assert 24 < summary["streams"]["cam0"]["fps"] < 36
