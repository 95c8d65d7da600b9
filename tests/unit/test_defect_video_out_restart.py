"""`sink.file`: a stream id added again (ended, then started) writes a new file, never over one."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import Field

from engine.frame import Control, ControlKind, Frame, StreamInfo, now_ns
from engine.metrics import NodeMetrics
from engine.plan import source_plan
from engine.registry import Emit, OperatorContext, Source, register
from engine.runtime import RunOptions, Runtime
from engine.spec import StrictModel
from engine.testing import plan_from_yaml
from operators.video_out import FileConfig, FileSink

W, H = 64, 48


def picture(level: int) -> np.ndarray:
    return np.full((H, W, 3), level, np.uint8)


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def assert_recording(path: Path, frames: int, level: int) -> None:
    pictures = decoded(path)
    assert len(pictures) == frames, path
    assert all(abs(float(p.mean()) - level) < 4 for p in pictures), path


async def record(sink: FileSink, sid: str, frames: int, level: int) -> None:
    """One life of a stream: start, `frames` frames at 30 fps (pts from 0 again), end."""
    await sink.on_stream_start(StreamInfo(sid, width=W, height=H, fps=30.0, time_base=Fraction(1, 30)))
    for seq in range(frames):
        assert await sink.process(Frame(sid, seq, seq, now_ns(), picture(level)))
    await sink.on_stream_end(sid)


def file_sink(output_dir: Path, extra: dict[str, object] | None = None) -> FileSink:
    config = FileConfig.model_validate({"preset": "ultrafast", "require_redaction": False, **(extra or {})})
    return FileSink(config, OperatorContext("video", NodeMetrics("video"), output_dir=output_dir))


async def test_a_stream_started_again_writes_a_second_file_and_keeps_the_first(tmp_path: Path) -> None:
    sink = file_sink(tmp_path)
    await record(sink, "cam0", 20, 60)
    await record(sink, "cam0", 12, 180)
    await record(sink, "cam0", 5, 120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0-1.mp4", "cam0-2.mp4", "cam0.mp4"]
    assert_recording(tmp_path / "cam0.mp4", 20, 60)
    assert_recording(tmp_path / "cam0-1.mp4", 12, 180)
    assert_recording(tmp_path / "cam0-2.mp4", 5, 120)
    assert sink.paths["cam0"] == [tmp_path / n for n in ("cam0.mp4", "cam0-1.mp4", "cam0-2.mp4")]
    assert sink.ctx.metrics.events["files_opened"] == 3


async def test_a_restarted_stream_skips_files_left_by_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "cam0-1.mp4").write_bytes(b"an earlier run's recording")
    sink = file_sink(tmp_path)
    await record(sink, "cam0", 6, 60)
    await record(sink, "cam0", 4, 180)
    assert (tmp_path / "cam0-1.mp4").read_bytes() == b"an earlier run's recording"
    assert_recording(tmp_path / "cam0.mp4", 6, 60)
    assert_recording(tmp_path / "cam0-2.mp4", 4, 180)


async def test_segments_of_a_restarted_stream_go_on_numbering(tmp_path: Path) -> None:
    sink = file_sink(tmp_path, {"segment_s": 1.0})
    await record(sink, "cam0", 45, 60)  # 30 + 15
    await record(sink, "cam0", 10, 180)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0_0000.mp4", "cam0_0001.mp4", "cam0_0002.mp4"]
    assert_recording(tmp_path / "cam0_0001.mp4", 15, 60)
    assert_recording(tmp_path / "cam0_0002.mp4", 10, 180)


async def test_a_path_without_segment_numbers_never_overwrites_a_segment(tmp_path: Path) -> None:
    sink = file_sink(tmp_path, {"segment_s": 1.0, "path": "{stream}.mp4"})
    await record(sink, "cam0", 40, 60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0-1.mp4", "cam0.mp4"]
    assert_recording(tmp_path / "cam0.mp4", 30, 60)
    assert_recording(tmp_path / "cam0-1.mp4", 10, 60)


class LevelConfig(StrictModel):
    frames: int = Field(10, ge=0)
    level: int = Field(128, ge=0, le=255)


@register("test.defect_level")
class LevelSource(Source[LevelConfig]):
    """`frames` flat frames of one grey level at 30 fps (pts = seq), then the end."""

    Config = LevelConfig

    async def run(self, emit: Emit) -> None:
        cfg, sid = self.config, self.ctx.stream_id
        info = StreamInfo(sid, width=W, height=H, fps=30.0, time_base=Fraction(1, 30))
        await emit(Control(ControlKind.START, sid, info))
        for seq in range(cfg.frames):
            await emit(Frame(sid, seq, seq, now_ns(), picture(cfg.level)))
        await emit(Control(ControlKind.END, sid))


GRAPH = """\
name: restart
sources:
  - {id: unused, url: none, op: test.defect_level}
nodes:
  - {id: video, op: sink.file, inputs: [sources], config: {preset: ultrafast, require_redaction: false}}
"""


async def test_a_worker_stream_removed_and_added_again_keeps_both_recordings(tmp_path: Path) -> None:
    plan = replace(plan_from_yaml(GRAPH), sources=[])
    runtime = Runtime(plan, RunOptions(output_dir=tmp_path, keep_alive=True))
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.05)
    for life, (frames, level) in enumerate(((15, 60), (9, 180))):
        spec = {
            "id": "cam0",
            "url": "none",
            "op": "test.defect_level",
            "config": {"frames": frames, "level": level},
        }
        runtime.add_stream(source_plan(spec))
        sink: FileSink = runtime.operator("video")  # type: ignore[assignment]
        for _ in range(1000):  # until the stream has ended at the sink (its file closed)
            await asyncio.sleep(0.01)
            if len(sink.paths.get("cam0", [])) == life + 1 and "cam0" not in sink.writers:
                break
        await runtime.remove_stream("cam0")
    runtime.stop()
    await asyncio.wait_for(task, timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam0-1.mp4", "cam0.mp4"]
    assert_recording(tmp_path / "cam0.mp4", 15, 60)
    assert_recording(tmp_path / "cam0-1.mp4", 9, 180)


async def test_a_path_without_stream_names_the_file_each_stream_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = file_sink(tmp_path, {"path": "all.mp4"})
    await record(sink, "cam0", 3, 40)
    await record(sink, "cam1", 3, 200)
    assert_recording(tmp_path / "all.mp4", 3, 40)
    assert_recording(tmp_path / "all-1.mp4", 3, 200)  # nothing lost, nothing overwritten ...
    assert "path 'all.mp4' has no {stream}: stream cam1 writes all-1.mp4" in caplog.text  # ... and said
