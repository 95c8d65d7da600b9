"""`sink.file`: real H.264 MP4s (PyAV), the refusal of unredacted frames, timestamps, segment rotation."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import Field

from engine.frame import Control, ControlKind, Frame, Item, StreamInfo, now_ns
from engine.registry import Emit, Operator, Source, register
from engine.spec import StrictModel
from engine.testing import run_graph
from operators.video_out import _Clock


class TimedConfig(StrictModel):
    frames: int = Field(30, ge=0)
    width: int = 64
    height: int = 48


@register("test.timed")
class TimedSource(Source[TimedConfig]):
    """Frames at 30 fps (pts = seq, time base 1/30), each a horizontal ramp shifted by its number."""

    Config = TimedConfig

    async def run(self, emit: Emit) -> None:
        cfg, sid = self.config, self.ctx.stream_id
        info = StreamInfo(sid, width=cfg.width, height=cfg.height, fps=30.0, time_base=Fraction(1, 30))
        await emit(Control(ControlKind.START, sid, info))
        ramp = np.linspace(0, 255, cfg.width, dtype=np.float32)
        for seq in range(cfg.frames):
            row = ((ramp + 4 * seq) % 256).astype(np.uint8)
            image = np.repeat(np.repeat(row[None, :, None], cfg.height, 0), 3, 2)
            await emit(Frame(sid, seq, seq, now_ns(), np.ascontiguousarray(image)))
        await emit(Control(ControlKind.END, sid))


class MarkConfig(StrictModel):
    every: int = 1


@register("test.mark_redacted")
class MarkRedacted(Operator[MarkConfig]):
    """Marks every `every`-th frame as redacted (clean), leaving the others unmarked."""

    Config = MarkConfig

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Frame)
        if item.seq % self.config.every == 0:
            item.meta["redaction"] = "clean"
        return (item,)


def graph(sink_config: str = "", frames: int = 30, mark_every: int = 0, size: str = "") -> str:
    mark = f"  - {{id: mark, op: test.mark_redacted, inputs: [sources], config: {{every: {mark_every}}}}}\n"
    return f"""\
name: video_test
sources:
  - {{id: cam0, url: none, op: test.timed, config: {{frames: {frames}{size}}}}}
nodes:
{mark if mark_every else ""}  - {{id: video, op: sink.file, inputs: [{"mark" if mark_every else "sources"}], queue: {{size: 256}},
     config: {{preset: ultrafast{sink_config}}}}}
"""


def probe(path: Path) -> tuple[int, float, Fraction, list[bool], list[np.ndarray]]:
    """(frames, duration s, average rate, keyframe flags, pictures) of an MP4, decoded back."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        frames = list(c.decode(s))
        duration = float(s.duration * s.time_base) if s.duration else 0.0
        rate = s.average_rate
    return (
        len(frames),
        duration,
        rate,
        [f.key_frame for f in frames],
        [f.to_ndarray(format="rgb24") for f in frames],
    )


async def test_unredacted_frames_are_refused_counted_and_never_written(tmp_path: Path) -> None:
    _, summary = await run_graph(graph(), output_dir=tmp_path)
    node = summary["nodes"]["video"]
    assert node["dropped_by_reason"] == {"unredacted": 30}
    assert node["out"] == 0
    assert list(tmp_path.iterdir()) == []


async def test_only_marked_frames_are_written(tmp_path: Path) -> None:
    _, summary = await run_graph(graph(mark_every=2), output_dir=tmp_path)
    assert summary["nodes"]["video"]["dropped_by_reason"] == {"unredacted": 15}
    n, duration, _, _, pictures = probe(tmp_path / "cam0.mp4")
    assert n == 15
    assert abs(duration - 30 / 30) < 0.1  # the gaps keep their time: frames at 0, 2/30, 4/30 ...
    assert abs(float(pictures[1][0, 0, 0]) - 8) <= 3  # frame 2's ramp starts at 4 * 2


async def test_require_redaction_false_writes_every_frame_with_its_timing(tmp_path: Path) -> None:
    _, summary = await run_graph(graph(", require_redaction: false", frames=45), output_dir=tmp_path)
    assert summary["nodes"]["video"]["dropped"] == 0
    n, duration, rate, keys, pictures = probe(tmp_path / "cam0.mp4")
    assert n == 45
    assert rate == 30
    assert abs(duration - 1.5) < 0.05
    assert keys[0]
    ramp = np.linspace(0, 255, 64)
    assert np.abs(pictures[0][24, :, 0].astype(float) - ramp).mean() < 6  # the picture survived


async def test_segments_rotate_every_segment_s_each_starting_with_a_keyframe(tmp_path: Path) -> None:
    await run_graph(graph(", require_redaction: false, segment_s: 1.0", frames=75), output_dir=tmp_path)
    files = sorted(tmp_path.glob("*.mp4"))
    assert [f.name for f in files] == ["cam0_0000.mp4", "cam0_0001.mp4", "cam0_0002.mp4"]
    counts = []
    for f in files:
        n, duration, rate, keys, _ = probe(f)
        counts.append(n)
        assert keys[0]
        assert rate == 30
        assert abs(duration - n / 30) < 0.05
    assert counts == [30, 30, 15]


async def test_odd_sizes_are_cropped_to_even_for_yuv420p(tmp_path: Path) -> None:
    await run_graph(
        graph(", require_redaction: false", frames=3, size=", width: 63, height: 47"), output_dir=tmp_path
    )
    _, _, _, _, pictures = probe(tmp_path / "cam0.mp4")
    assert pictures[0].shape == (46, 62, 3)


async def test_redact_then_sink_writes_covered_frames(tmp_path: Path) -> None:
    text = graph(frames=10).replace(
        "  - {id: video, op: sink.file, inputs: [sources]",
        "  - {id: redact, op: redact, inputs: [sources], config: {fill_color: [0, 0, 0]}}\n"
        "  - {id: video, op: sink.file, inputs: [redact]",
    )
    _, summary = await run_graph(text, output_dir=tmp_path)
    assert summary["nodes"]["redact"]["events"] == {"redaction_covered": 10}  # no detector: covered
    n, _, _, _, pictures = probe(tmp_path / "cam0.mp4")
    assert n == 10
    assert max(int(p.max()) for p in pictures) <= 2  # black, give or take the codec


def test_clock_starts_at_zero_stitches_restarts_and_times_pts_less_frames() -> None:
    clock = _Clock(Fraction(1, 1000), 25.0)
    times = [clock.seconds(p) for p in (5000, 5040, 5080, 5000, 5040)]  # then the source starts over
    np.testing.assert_allclose(times, [0.0, 0.04, 0.08, 0.12, 0.16])  # one frame later, never back
    untimed = _Clock(Fraction(1, 1000), 25.0)
    np.testing.assert_allclose([untimed.seconds(None) for _ in range(3)], [0.0, 0.04, 0.08])


async def test_a_refused_rtsp_push_never_logs_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """FFmpeg's error quotes the URL it was given, password and all: the warning is scrubbed."""
    yaml = (
        graph(frames=3)
        .replace(
            "op: sink.file",
            "op: sink.rtsp",
        )
        .replace(
            "config: {preset: ultrafast}",
            'config: {preset: ultrafast, url: "rtsp://admin:Secret9@127.0.0.1:9/{stream}", '
            "require_redaction: false, realtime: false}",
        )
    )
    with caplog.at_level("WARNING"):
        _, summary = await run_graph(yaml)
    warnings = [r.getMessage() for r in caplog.records if "RTSP push failed" in r.getMessage()]
    assert warnings  # the push was tried and refused (port 9)
    assert not any("Secret9" in r.getMessage() for r in caplog.records)
    assert summary["nodes"]["video"]["events"]["rtsp_failures"] >= 1
