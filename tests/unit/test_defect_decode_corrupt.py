"""decode.pyav counts damaged H.264 frames whatever its threading (FFmpeg conceals them silently
under slice threads), drains its decoders at teardown, and honours packets flagged corrupt."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import av
import pytest

from engine.frame import Frame, Packet, StreamInfo
from engine.samples import make_clip
from engine.testing import CollectOperator, run_graph
from operators.decode import PyAVDecodeConfig, _StreamDecoder

DAMAGED = (5, 12, 20, 40, 47)  # P-frames of a 60-frame clip with keyframes at 0 and 30
THREADING = ["thread_type: slice, threads: 4", "thread_type: frame, threads: 4", "thread_type: auto"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("defect") / "clip.mp4", 320, 240, fps=30, seconds=2, gop=30)


def samples(path: Path) -> list[tuple[int | None, int, bool]]:
    """(file offset, size, keyframe) of each video packet."""
    with av.open(str(path)) as c:
        return [(p.pos, p.size, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


@pytest.fixture(scope="module")
def damaged(clip: Path) -> Path:
    """The clip with 64 random bytes in the middle of five P-frames' slice data (the MP4 index, the
    NAL length prefixes and the slice headers untouched: the demuxer delivers every packet)."""
    data = bytearray(clip.read_bytes())
    rng = random.Random(7)
    table = samples(clip)
    for i in DAMAGED:
        pos, size, key = table[i]
        assert pos is not None
        assert not key
        assert size > 200
        at = pos + size // 2 - 32
        data[at : at + 64] = rng.randbytes(64)
    out = clip.with_name("damaged.mp4")
    out.write_bytes(bytes(data))
    assert [(s, k) for _, s, k in samples(out)] == [(s, k) for _, s, k in table]
    return out


def graph(url: Path, config: str) -> str:
    return f"""\
name: defect_decode
sources:
  - id: cam0
    url: {url}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources], config: {{{config}}}}}
  - {{id: out, op: test.collect, inputs: [decode], queue: {{size: 256}}}}
"""


async def run(url: Path, config: str) -> tuple[list[Frame], dict[str, Any]]:
    runtime, summary = await asyncio.wait_for(run_graph(graph(url, config)), timeout=60)
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    frames = [f for f in out.items if isinstance(f, Frame)]
    return frames, summary["nodes"]["decode"]


@pytest.mark.parametrize("threading", THREADING)
async def test_damaged_p_frames_are_counted_and_dropped(damaged: Path, threading: str) -> None:
    frames, node = await run(damaged, threading)
    lost = node["dropped_by_reason"].get("corrupt_frame", 0) + node["dropped_by_reason"].get(
        "corrupt_packet", 0
    )
    assert lost > 0
    assert node["dropped_by_reason"].get("corrupt_frame", 0) >= 3  # most damaged frames are flagged
    assert len(frames) + lost <= 60
    assert len(frames) >= 60 - 2 * len(DAMAGED)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all("corrupt" not in f.degraded for f in frames)


@pytest.mark.parametrize("threading", THREADING)
async def test_damaged_p_frames_are_kept_flagged_on_keep(damaged: Path, threading: str) -> None:
    frames, node = await run(damaged, threading + ", on_corrupt: keep")
    flagged = [f.pts for f in frames if "corrupt" in f.degraded]
    assert len(flagged) == node["events"]["corrupt_frames_kept"] >= 3
    assert "corrupt_frame" not in node["dropped_by_reason"]
    assert len(frames) + node["dropped_by_reason"].get("corrupt_packet", 0) == 60


@pytest.mark.parametrize("threading", THREADING)
async def test_undamaged_clip_counts_nothing_corrupt(clip: Path, threading: str) -> None:
    frames, node = await run(clip, threading)
    assert node["dropped"] == 0
    assert "events" not in node
    assert len(frames) == 60
    assert not any(f.degraded for f in frames)


def test_slice_threads_stay_as_configured_when_error_resilience_is_off() -> None:
    info = StreamInfo("cam0", codec="h264")
    on = _StreamDecoder(info, PyAVDecodeConfig(thread_type="slice", threads=4))
    off = _StreamDecoder(info, PyAVDecodeConfig(thread_type="slice", threads=4, error_resilience=False))
    frame = _StreamDecoder(info, PyAVDecodeConfig(thread_type="frame", threads=4))
    assert (on.ctx.thread_count, off.ctx.thread_count, frame.ctx.thread_count) == (1, 4, 4)


@pytest.mark.parametrize("on_corrupt", ["drop", "keep"])
def test_a_packet_the_demuxer_flags_corrupt_marks_its_frame(clip: Path, on_corrupt: str) -> None:
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        info = StreamInfo("cam0", codec=s.codec_context.name, extradata=s.codec_context.extradata)
        raw = [p for p in c.demux(s) if p.size]
        raw[7].is_corrupt = True  # as MPEG-TS marks a packet after a continuity error
        decoder = _StreamDecoder(info, PyAVDecodeConfig(thread_type="slice", on_corrupt=on_corrupt))
        frames: list[Frame] = []
        corrupt = 0
        for seq, p in enumerate(raw):
            got, n = decoder.decode(Packet("cam0", seq, p.pts, 0, p, p.is_keyframe))
            frames += got
            corrupt += n
        got, n = decoder.decode(None)
    frames += got
    corrupt += n
    assert corrupt == 1
    if on_corrupt == "drop":
        assert len(frames) == 59
        assert raw[7].pts not in [f.pts for f in frames]
    else:
        assert len(frames) == 60
        assert [f.pts for f in frames if "corrupt" in f.degraded] == [raw[7].pts]


async def test_teardown_drains_the_decoders_of_streams_that_never_ended(clip: Path) -> None:
    """A graph cancelled mid-stream: its decoders are drained (PyAV 18 freezes the process when an
    undrained frame-threaded H.264 context is freed)."""
    text = graph(clip, "thread_type: frame, threads: 4").replace(
        f"url: {clip}", f"url: {clip}\n    config: {{loop: true, realtime: true}}"
    )
    from engine.runtime import Runtime
    from engine.testing import plan_from_yaml

    runtime = Runtime(plan_from_yaml(text))
    task = asyncio.create_task(runtime.run())
    for _ in range(200):
        await asyncio.sleep(0.05)
        if runtime._nodes and len(runtime.operator("out").items) >= 5:  # type: ignore[attr-defined]
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    decoders = runtime.operator("decode").decoders  # type: ignore[attr-defined]
    left = dict(decoders)
    for d in left.values():  # without the fix: drain here, or freeing them would freeze pytest
        d.ctx.decode(None)
    assert left == {}
