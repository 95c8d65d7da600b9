"""`decode.pyav`: threaded FFmpeg decoding of packets into numpy frames, one decoder per stream."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import av
import av.error
from pydantic import Field

from engine.frame import Frame, Item, Packet, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel

log = logging.getLogger("framegraph.decode")


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
        self.ctx.thread_type = cfg.thread_type.upper()
        self.ctx.thread_count = cfg.threads
        self.pending: dict[int | None, tuple[int, Any]] = {}
        self.seq = 0
        self.corrupt_packets = 0

    def decode(self, packet: Packet | None) -> tuple[list[Frame], int]:
        """Frames the packet completes (None flushes) and how many were lost to corruption."""
        raw: Any = None
        if packet is not None:
            self.pending[packet.pts] = (packet.capture_ns, packet.trace)
            raw = packet.data if isinstance(packet.data, av.Packet) else av.Packet(packet.data)
            raw.pts = packet.pts
        try:
            frames = self.ctx.decode(raw)
        except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as e:
            log.debug("%s: undecodable packet: %s", self.info.stream_id, e)
            self.corrupt_packets += 1
            return [], 0
        out = []
        corrupt = 0
        for vf in frames:
            if vf.is_corrupt:
                corrupt += 1
                if self.cfg.on_corrupt == "drop":
                    self.pending.pop(vf.pts, None)
                    continue
            fallback = (packet.capture_ns, packet.trace) if packet else (0, None)
            capture_ns, trace = self.pending.pop(vf.pts, fallback)
            image = vf.to_ndarray(format=self.cfg.pixel_format, width=self.cfg.width, height=self.cfg.height)
            frame = Frame(self.info.stream_id, self.seq, vf.pts, capture_ns, image, self.cfg.pixel_format)
            frame.trace = trace
            if vf.is_corrupt:
                frame.degraded.add("corrupt")
            out.append(frame)
            self.seq += 1
        if len(self.pending) > 64:  # pts never matched (no pts on the stream): forget the oldest
            for key in list(self.pending)[:-32]:
                del self.pending[key]
        return out, corrupt


class PyAVDecode(Operator[PyAVDecodeConfig]):
    """H.264/H.265/... packets in, RGB or BGR numpy frames out; corrupt packets counted."""

    Config = PyAVDecodeConfig

    def __init__(self, config: PyAVDecodeConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.decoders: dict[str, _StreamDecoder] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        self.decoders[info.stream_id] = _StreamDecoder(info, self.config)

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
