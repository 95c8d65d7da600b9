"""Video out: `sink.file` (MP4 per stream, optional segments) and `sink.rtsp` (RTSP RECORD push).

Both encode H.264 (libx264, yuv420p) with PyAV through `H264Writer`, one per stream, timed by
the source's timestamps (a looping or reconnecting source's restart is stitched on). Both
fail closed: a frame without `frame.meta["redaction"]` (it never went through `redact`) is
refused, counted as dropped "unredacted" and never written, unless `require_redaction: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import av.error
import numpy as np
from pydantic import Field, field_validator

from engine.frame import Frame, Item, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel, template_problem
from operators.urls import scrub

log = logging.getLogger("framegraph.video_out")
TREATMENTS = ("redacted", "clean", "covered")


class EncodeConfig(StrictModel):
    """Encoder options shared by the video sinks."""

    preset: str = Field("veryfast", description="libx264 preset (ultrafast ... veryslow).")
    crf: int = Field(23, ge=0, le=51, description="Constant quality (lower: better, bigger).")
    gop_s: float = Field(2.0, gt=0, description="Seconds between keyframes.")
    threads: int = Field(0, ge=0, le=64, description="Encoder threads; 0: auto.")
    require_redaction: bool = Field(
        True, description="Refuse (drop, count) frames that did not go through `redact`."
    )


@dataclass
class _Clock:
    """Output timestamps in seconds from a stream's pts: starts at 0, never goes back."""

    time_base: Fraction
    fps: float
    first: float | None = None
    offset: float = 0.0
    last: float | None = None
    count: int = 0

    def seconds(self, pts: int | None) -> float:
        step = 1.0 / self.fps
        if pts is None:
            t = self.count * step
        else:
            raw = float(pts * self.time_base)
            if self.first is None:
                self.first = raw
            t = raw - self.first + self.offset
            if self.last is not None and t <= self.last:  # the source started over (loop, reconnect)
                self.offset += self.last + step - t
                t = self.last + step
        self.last = t
        self.count += 1
        return t


class H264Writer:
    """One H.264 output (a file, or a URL with `fmt`); frames in with their time. Blocking."""

    TIME_BASE = Fraction(1, 90000)

    def __init__(
        self,
        target: str,
        width: int,
        height: int,
        fps: float,
        cfg: EncodeConfig,
        fmt: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.target = target
        self.width, self.height = width - width % 2, height - height % 2  # yuv420p: even sizes
        self.container: Any = av.open(target, "w", format=fmt, options=options or {})
        try:
            rate = Fraction(fps).limit_denominator(1001)
            stream: Any = self.container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
            stream.codec_context.time_base = self.TIME_BASE
            stream.thread_count = cfg.threads
            stream.options = {
                "preset": cfg.preset,
                "crf": str(cfg.crf),
                "g": str(max(1, round(cfg.gop_s * fps))),
                "bf": "0",
            }
            self.stream = stream
            if fmt is not None:  # a live output: connect now (the header), not at the first packet
                self.container.start_encoding()
        except Exception:
            self.container.close()
            raise
        self.frames = 0
        self.last_pts = -1

    def write(self, image: np.ndarray, t_s: float, pixel_format: str = "rgb24") -> None:
        """Encode one HWC uint8 picture shown at `t_s` seconds (relative to this output's start)."""
        vf = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image[: self.height, : self.width]), format=pixel_format
        )
        pts = max(round(t_s / self.TIME_BASE), self.last_pts + 1)
        vf.pts, vf.time_base = pts, self.TIME_BASE
        self.last_pts = pts
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the container (idempotent)."""
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None


class _VideoSink(Operator[Any]):
    """Per-stream writers, the redaction gate and the shared process loop of the video sinks."""

    consumes, produces = "frames+redacted", "same"  # require_redaction: false waives

    def __init__(self, config: Any, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.infos: dict[str, StreamInfo] = {}
        self.clocks: dict[str, _Clock] = {}
        self.writers: dict[str, H264Writer] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        self.infos[info.stream_id] = info

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self.infos.pop(stream_id, None)
        self.clocks.pop(stream_id, None)
        writer = self.writers.pop(stream_id, None)
        if writer is not None:
            await self.ctx.run_blocking(writer.close)
        return ()

    async def teardown(self) -> None:
        for sid in list(self.writers):
            await self.on_stream_end(sid)

    def admitted(self, frame: Frame) -> bool:
        """The fail-closed gate: only frames `redact` has treated pass (unless switched off); a
        frame it withheld (no detections, `on_unavailable: withhold`) is never written."""
        if frame.meta.get("redaction") == "withheld":
            self.ctx.metrics.drop(frame.stream_id, "redaction_withheld")
            return False
        if not self.config.require_redaction or frame.meta.get("redaction") in TREATMENTS:
            return True
        self.ctx.metrics.drop(frame.stream_id, "unredacted")
        return False

    def clock(self, frame: Frame) -> _Clock:
        clock = self.clocks.get(frame.stream_id)
        if clock is None:
            info = self.infos.get(frame.stream_id) or StreamInfo(frame.stream_id)
            clock = _Clock(info.time_base, info.fps or 30.0)
            self.clocks[frame.stream_id] = clock
        return clock

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"{type(self).__name__} takes frames, got {type(item).__name__}")
        if not isinstance(item.image, np.ndarray):
            raise TypeError("video sinks take frames on the CPU (numpy images)")
        if not self.admitted(item):
            return ()
        t = self.clock(item).seconds(item.pts)
        await self.pace(item.stream_id, t)
        if await self.ctx.run_blocking(self.write, item, t):
            return (item,)
        return ()

    async def pace(self, stream_id: str, t_s: float) -> None:
        """Wait until a frame of time `t_s` is due (live outputs); files are written at once."""

    def write(self, frame: Frame, t_s: float) -> bool:
        """Write one frame (in a worker thread); False when it was dropped (counted)."""
        raise NotImplementedError


class FileConfig(EncodeConfig):
    """Options of `sink.file`."""

    path: str = Field(
        "",
        description="Under --output; {graph}, {stream}, {segment} are filled in. Default: "
        "{stream}.mp4, or {stream}_{segment:04d}.mp4 with segments.",
    )
    segment_s: float = Field(0.0, ge=0, description="Start a new file every this many seconds; 0: one file.")

    @field_validator("path")
    @classmethod
    def _fillable(cls, value: str) -> str:
        if (why := template_problem(value, ("graph", "stream", "segment"))) is not None:
            raise ValueError(why)
        return value


class FileSink(_VideoSink):
    """An MP4 per stream (or a numbered series of segments) under the run's output directory."""

    Config = FileConfig
    config: FileConfig

    def __init__(self, config: FileConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.segments: dict[str, tuple[int, float]] = {}  # stream -> (index, start second)
        self.paths: dict[str, list[Path]] = {}  # every file written, per stream
        self.written: set[Path] = set()  # every file opened: none is opened twice

    def _path(self, stream_id: str, segment: int) -> Path:
        cfg = self.config
        pattern = cfg.path or ("{stream}_{segment:04d}.mp4" if cfg.segment_s else "{stream}.mp4")
        name = pattern.format(graph=self.ctx.graph_name, stream=stream_id, segment=segment)
        return self.ctx.output_dir / name

    def _new_path(self, stream_id: str, segment: int, restarted: bool) -> Path:
        """The file a stream's next output goes to: never one this sink opened before (a stream
        added again under its id, a size change, a `path` without {segment}); for a stream
        started again, no existing file either. Taken: `cam0.mp4` -> `cam0-1.mp4`, `cam0-2.mp4`...

        A stream's first file replaces what an earlier run left under its name, as before.
        """
        path = self._path(stream_id, segment)
        candidate, n = path, 0
        while candidate in self.written or (restarted and candidate.exists()):
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if n and "{stream}" not in (self.config.path or "{stream}"):
            log.warning(
                "%s: path %r has no {stream}: stream %s writes %s (put {stream} in the path to name "
                "files by stream)",
                self.ctx.node_id,
                self.config.path,
                stream_id,
                candidate.name,
            )
        return candidate

    def write(self, frame: Frame, t_s: float) -> bool:
        sid, cfg = frame.stream_id, self.config
        writer = self.writers.get(sid)
        index, start = self.segments.get(sid, (-1, 0.0))
        size_changed = writer is not None and (writer.width, writer.height) != (
            frame.width - frame.width % 2,
            frame.height - frame.height % 2,
        )
        if writer is None or size_changed or (cfg.segment_s and t_s - start >= cfg.segment_s - 1e-6):
            restarted = writer is None and sid in self.paths  # ended, then started again
            if writer is not None:
                writer.close()
            index, start = index + 1, t_s
            path = self._new_path(sid, index, restarted)
            path.parent.mkdir(parents=True, exist_ok=True)
            info = self.infos.get(sid)
            writer = H264Writer(str(path), frame.width, frame.height, (info.fps if info else 0) or 30.0, cfg)
            self.written.add(path)
            self.writers[sid] = writer
            self.segments[sid] = (index, start)
            self.paths.setdefault(sid, []).append(path)
            self.ctx.metrics.events["files_opened"] += 1
        writer.write(frame.image, t_s - start, frame.pixel_format)
        return True


class RtspConfig(EncodeConfig):
    """Options of `sink.rtsp`."""

    url: str = Field(
        min_length=1,
        description="rtsp://host:port/path of a server that accepts RECORD; {stream} is filled in.",
    )
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTP over the RTSP connection (tcp) or UDP.")
    retry_s: float = Field(2.0, gt=0, description="While the server is unreachable, retry this often.")
    realtime: bool = Field(
        True,
        description="Send frames when they are due (a file source plays at its frame rate); "
        "servers drop a burst faster than real time.",
    )
    preset: str = Field("ultrafast", description="libx264 preset; live output favours speed.")

    @field_validator("url")
    @classmethod
    def _fillable(cls, value: str) -> str:
        if (why := template_problem(value, ("stream",))) is not None:
            raise ValueError(why)
        return value


class RtspSink(_VideoSink):
    """Pushes each stream to an RTSP server (ANNOUNCE/RECORD); frames while it is down are dropped."""

    Config = RtspConfig
    config: RtspConfig

    def __init__(self, config: RtspConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.next_try: dict[str, float] = {}
        self.t0: dict[str, float] = {}
        self.wall0: dict[str, float] = {}  # stream -> monotonic time of its output time 0
        self.down: set[str] = set()  # streams whose push failed and has not connected since

    async def pace(self, stream_id: str, t_s: float) -> None:
        if not self.config.realtime:
            return
        now = time.monotonic()
        start = self.wall0.setdefault(stream_id, now - t_s)
        if start + t_s - now > 0:
            await asyncio.sleep(start + t_s - now)
        elif now - (start + t_s) > 1.0:  # fell behind by more than a second: catch up, do not burst
            self.wall0[stream_id] = now - t_s

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        for state in (self.wall0, self.next_try, self.t0):
            state.pop(stream_id, None)
        self.down.discard(stream_id)
        return await super().on_stream_end(stream_id)

    def write(self, frame: Frame, t_s: float) -> bool:
        sid, cfg = frame.stream_id, self.config
        writer = self.writers.get(sid)
        try:
            if writer is None:
                if time.monotonic() < self.next_try.get(sid, 0.0):
                    self.ctx.metrics.drop(sid, "rtsp_unavailable")
                    return False
                info = self.infos.get(sid)
                url = cfg.url.format(stream=sid)
                writer = H264Writer(
                    url,
                    frame.width,
                    frame.height,
                    (info.fps if info else 0) or 30.0,
                    cfg,
                    fmt="rtsp",
                    options={"rtsp_transport": cfg.transport},
                )
                self.writers[sid], self.t0[sid] = writer, t_s
                self.ctx.metrics.events["rtsp_connects"] += 1
                if sid in self.down:
                    self.down.discard(sid)
                    log.warning("%s: RTSP push resumed", sid)
            writer.write(frame.image, t_s - self.t0[sid], frame.pixel_format)
            return True
        except (av.error.FFmpegError, OSError) as e:
            why = scrub(str(e))  # FFmpeg quotes the URL
            if sid not in self.down:  # once, not once per retry while the server stays down
                log.warning("%s: RTSP push failed: %s (retrying every %gs)", sid, why, cfg.retry_s)
                self.down.add(sid)
            self.ctx.metrics.last_error = why
            self.ctx.metrics.events["rtsp_failures"] += 1
            self.ctx.metrics.drop(sid, "rtsp_unavailable")
            self.writers.pop(sid, None)
            if writer is not None:
                with contextlib.suppress(av.error.FFmpegError, OSError):
                    writer.close()
            self.next_try[sid] = time.monotonic() + cfg.retry_s
            return False
