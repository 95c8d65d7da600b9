"""`decode.pyav`: threaded FFmpeg decoding of packets into numpy frames, one decoder per stream."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

import av
import av.error
from pydantic import Field

from engine.frame import Frame, Item, Packet, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel

log = logging.getLogger("framegraph.decode")

# Codecs whose FFmpeg decoder turns its error resilience off while slice threads are active
# (h264's `enable_er` option: auto = off with slice threads, which FFmpeg calls unsafe). Without
# it a damaged slice is neither concealed nor flagged: the frame comes out broken, with
# decode_error_flags 0, and only FFmpeg's log (no stream named) tells. See `error_resilience`.
_ER_OFF_UNDER_SLICE_THREADS = frozenset({"h264"})


class PyAVDecodeConfig(StrictModel):
    """Options of `decode.pyav`."""

    pixel_format: Literal["rgb24", "bgr24"] = Field("rgb24", description="Layout of Frame.image.")
    threads: int = Field(0, ge=0, le=64, description="FFmpeg threads per decoder; 0 = auto.")
    thread_type: Literal["auto", "frame", "slice"] = Field(
        "auto",
        description=(
            "frame threading is fastest but holds one frame per thread (latency); slice threading "
            "adds none. Live cameras with many streams: slice (streams run in parallel lanes)."
        ),
    )
    on_corrupt: Literal["drop", "keep"] = Field(
        "drop",
        description="A frame FFmpeg flags corrupt (concealed errors): drop and count it, or keep it "
        "marked degraded ('corrupt').",
    )
    error_resilience: bool = Field(
        True,
        description="Keep FFmpeg's error resilience on, so that a damaged frame is concealed and "
        "flagged corrupt (what on_corrupt and the corrupt counters see). FFmpeg's H.264 decoder "
        "turns it off under slice threading, so with thread_type slice H.264 decodes on one thread "
        "per stream (no added latency; streams still decode in parallel). false: slice threads as "
        "configured, and damaged H.264 frames pass unflagged.",
    )
    width: int | None = Field(None, ge=16, description="Scale while converting (saves a resize).")
    height: int | None = Field(None, ge=16, description="Scale while converting.")


class _StreamDecoder:
    """One stream's codec context, and capture times of packets awaiting their frame."""

    def __init__(self, info: StreamInfo, cfg: PyAVDecodeConfig) -> None:
        self.info = info
        self.cfg = cfg
        self.ctx: Any = av.CodecContext.create(info.codec, "r")
        if info.extradata:
            self.ctx.extradata = info.extradata
        threads = cfg.threads
        if cfg.thread_type == "slice" and cfg.error_resilience and info.codec in _ER_OFF_UNDER_SLICE_THREADS:
            threads = 1  # no slice threads: FFmpeg keeps error resilience, damaged frames are flagged
        self.ctx.thread_type = cfg.thread_type.upper()
        self.ctx.thread_count = threads
        self.pending: dict[int | None, tuple[int, Any]] = {}
        self.suspect: set[int | None] = set()  # pts of packets the demuxer flagged corrupt
        self.seq = 0
        self.corrupt_packets = 0
        # a cancelled await leaves its decode running in its thread: close() must not overlap it
        self.lock = threading.Lock()

    def decode(self, packet: Packet | None) -> tuple[list[Frame], int]:
        """Frames the packet completes (None flushes) and how many were lost to corruption."""
        raw: Any = None
        if packet is not None:
            self.pending[packet.pts] = (packet.capture_ns, packet.trace)
            raw = packet.data if isinstance(packet.data, av.Packet) else av.Packet(packet.data)
            raw.pts = packet.pts
            if raw.is_corrupt:  # e.g. MPEG-TS continuity errors: data is missing; FFmpeg does not
                self.suspect.add(packet.pts)  # carry the packet's flag over to its frame
        try:
            with self.lock:
                frames = self.ctx.decode(raw)
        except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as e:
            log.debug("%s: undecodable packet: %s", self.info.stream_id, e)
            self.corrupt_packets += 1
            return [], 0
        out = []
        corrupt = 0
        for vf in frames:
            is_corrupt = vf.is_corrupt or (bool(self.suspect) and vf.pts in self.suspect)
            self.suspect.discard(vf.pts)
            if is_corrupt:
                corrupt += 1
                if self.cfg.on_corrupt == "drop":
                    self.pending.pop(vf.pts, None)
                    continue
            fallback = (packet.capture_ns, packet.trace) if packet else (0, None)
            capture_ns, trace = self.pending.pop(vf.pts, fallback)
            image = vf.to_ndarray(format=self.cfg.pixel_format, width=self.cfg.width, height=self.cfg.height)
            frame = Frame(self.info.stream_id, self.seq, vf.pts, capture_ns, image, self.cfg.pixel_format)
            frame.trace = trace
            if is_corrupt:
                frame.degraded.add("corrupt")
            out.append(frame)
            self.seq += 1
        if len(self.pending) > 64:  # pts never matched (no pts on the stream): forget the oldest
            for key in list(self.pending)[:-32]:
                del self.pending[key]
        if len(self.suspect) > 64:
            self.suspect.clear()
        return out, corrupt

    def close(self) -> None:
        """Drain the decoder. PyAV 18 deadlocks freeing a frame-threaded H.264 context that still
        holds frames, so a decoder is always drained before it is let go."""
        try:
            with self.lock:
                self.ctx.decode(None)
        except av.error.FFmpegError as e:
            log.debug("%s: flush at close failed: %s", self.info.stream_id, e)


class PyAVDecode(Operator[PyAVDecodeConfig]):
    """H.264/H.265/... packets in, RGB or BGR numpy frames out; corrupt packets counted."""

    consumes, produces = "packets", "frames"
    Config = PyAVDecodeConfig

    def __init__(self, config: PyAVDecodeConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.decoders: dict[str, _StreamDecoder] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        old = self.decoders.pop(info.stream_id, None)
        if old is not None:  # a start without an end: let the old decoder go drained
            await self.ctx.run_blocking(old.close)
        self.decoders[info.stream_id] = _StreamDecoder(info, self.config)

    async def teardown(self) -> None:
        """Streams that never ended (the graph was cancelled): drain their decoders."""
        while self.decoders:
            _, decoder = self.decoders.popitem()
            await self.ctx.run_blocking(decoder.close)

    async def on_stream_reset(self, info: StreamInfo) -> Sequence[Item]:
        """Flush the old decoder; a new one continues the stream's frame numbering."""
        old = self.decoders.pop(info.stream_id, None)
        tail: list[Frame] = []
        if old is not None:
            tail, _ = await self.ctx.run_blocking(old.decode, None)
        await self.on_stream_start(info)
        self.decoders[info.stream_id].seq = old.seq if old is not None else 0
        return tail

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        decoder = self.decoders.pop(stream_id, None)
        if decoder is None:
            return ()
        frames: list[Frame] = (await self.ctx.run_blocking(decoder.decode, None))[0]
        return frames

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Packet):
            raise TypeError(f"decode.pyav takes packets, got {type(item).__name__}")
        decoder = self.decoders.get(item.stream_id)
        if decoder is None:
            self.ctx.metrics.drop(item.stream_id, "no_stream_start")
            return ()
        frames: list[Frame]
        before = decoder.corrupt_packets
        frames, corrupt = await self.ctx.run_blocking(decoder.decode, item)
        if decoder.corrupt_packets != before:
            self.ctx.metrics.drop(item.stream_id, "corrupt_packet")
        if corrupt and self.config.on_corrupt == "drop":
            self.ctx.metrics.drop(item.stream_id, "corrupt_frame", corrupt)
        elif corrupt:
            self.ctx.metrics.events["corrupt_frames_kept"] += corrupt
        return frames
