"""`decode.nvdec`: NVDEC decoding (PyNvVideoCodec) of demuxed packets into CUDA RGB frames.

The sources demux with PyAV as usual; this operator turns each packet into Annex B (MP4 stores
length-prefixed NAL units and the parameter sets in avcC/hvcC extradata), hands it to one
NVDEC decoder per stream and emits frames whose `image` is a CUDA tensor (H, W, 3) uint8 RGB.
Each stream's decoder lives on a thread of its own (one decoder, one thread, as NVDEC was
measured with); `workers: N` on the node lets N streams submit packets at the same time.

PyNvVideoCodec, torch and numpy's view of the packet are imported when the node is set up,
never when this module is imported.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from engine.errors import OperatorError
from engine.frame import Frame, Item, Packet, StreamInfo, now_ns
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel

log = logging.getLogger("framegraph.nvdec")

CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1"}
"""StreamInfo.codec (FFmpeg's name) -> PyNvVideoCodec's cudaVideoCodec member."""
START_CODE = b"\x00\x00\x00\x01"
MAX_ERRORS_IN_ROW = 8  # then the stream's decoder is created anew
MAX_PENDING = 64  # packets awaiting their frame before the oldest are forgotten


class NvDecodeConfig(StrictModel):
    """Options of `decode.nvdec`."""

    gpu_id: int = Field(0, ge=0, le=63, description="CUDA device that decodes and holds the frames.")
    pixel_format: Literal["rgb24"] = Field("rgb24", description="Layout of Frame.image (HWC RGB).")
    on_corrupt: Literal["drop", "keep"] = Field(
        "drop",
        description="Frames decoded after an undecodable packet, until the next keyframe (their "
        "references are broken): drop and count them, or keep them marked degraded ('corrupt').",
    )
    latency: Literal["native", "low"] = Field(
        "native",
        description="native: up to 4 frames of decoder delay, safe with B-frames; low: a frame as "
        "soon as its packet is in (streams without B-frames only, e.g. most live cameras).",
    )


# ---------------------------------------------------------------------------------------------
# Length-prefixed (MP4) -> Annex B


def is_annexb(data: bytes) -> bool:
    """True when `data` starts with an Annex B start code."""
    return data.startswith(b"\x00\x00\x01") or data.startswith(START_CODE)


def _u16(buf: bytes, pos: int) -> int:
    if pos + 2 > len(buf):
        raise ValueError("extradata is truncated")
    return int.from_bytes(buf[pos : pos + 2], "big")


def _nal_list(buf: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    nals = []
    for _ in range(count):
        size = _u16(buf, pos)
        pos += 2
        if pos + size > len(buf):
            raise ValueError("extradata is truncated")
        nals.append(buf[pos : pos + size])
        pos += size
    return nals, pos


def parse_avcc(extradata: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [SPS..., PPS...]) of an ISO/IEC 14496-15 avcC record."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("not an avcC record")
    length_size = (extradata[4] & 3) + 1
    sps, pos = _nal_list(extradata, 6, extradata[5] & 0x1F)
    if pos >= len(extradata):
        raise ValueError("extradata is truncated")
    pps, _ = _nal_list(extradata, pos + 1, extradata[pos])
    return length_size, sps + pps


def parse_hvcc(extradata: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [VPS, SPS, PPS, SEI...]) of an ISO/IEC 14496-15 hvcC record."""
    if len(extradata) < 23 or extradata[0] != 1:
        raise ValueError("not an hvcC record")
    length_size = (extradata[21] & 3) + 1
    pos = 23
    nals: list[bytes] = []
    for _ in range(extradata[22]):
        if pos + 3 > len(extradata):
            raise ValueError("extradata is truncated")
        found, pos = _nal_list(extradata, pos + 3, _u16(extradata, pos + 1))
        nals += found
    return length_size, nals


class AnnexB:
    """Rewrites one stream's packets as Annex B, parameter sets before every keyframe.

    H.264/HEVC with avcC/hvcC extradata (MP4) have their NAL length prefixes replaced by start
    codes; Annex B input (RTSP, MPEG-TS) and other codecs (AV1) pass through unchanged, with
    Annex B extradata (an RTSP camera's SDP parameter sets) put before keyframes.
    """

    def __init__(self, codec: str, extradata: bytes | None) -> None:
        self.length_size = 0  # 0: the packets are already what the decoder takes
        self.parameter_sets = b""
        if not extradata:
            return
        if is_annexb(extradata):
            self.parameter_sets = extradata
            return
        if codec == "h264":
            self.length_size, nals = parse_avcc(extradata)
        elif codec == "hevc":
            self.length_size, nals = parse_hvcc(extradata)
        else:
            return
        self.parameter_sets = b"".join(START_CODE + nal for nal in nals)

    def convert(self, data: bytes, keyframe: bool) -> bytes:
        """One access unit in Annex B; ValueError when the length prefixes do not add up."""
        parts = [self.parameter_sets] if keyframe and self.parameter_sets else []
        if not self.length_size:
            parts.append(data)
            return b"".join(parts)
        size, pos, end = self.length_size, 0, len(data)
        while pos < end:
            if pos + size > end:
                raise ValueError(f"truncated NAL length prefix at byte {pos} of {end}")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            if pos + length > end:
                raise ValueError(f"NAL of {length} bytes runs past the packet ({end} bytes)")
            if length:
                parts += (START_CODE, data[pos : pos + length])
            pos += length
        return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Decoder backends: PyNvVideoCodec (the real one), or a stand-in that tests inject


class DecoderSession(Protocol):
    """One stream's hardware decoder. Called from that stream's thread only."""

    def decode(self, payload: bytes, key: int) -> list[tuple[int | None, Any]]:
        """Submit one Annex B access unit tagged `key`; return (key, image) of frames now ready."""
        ...

    def flush(self) -> list[tuple[int | None, Any]]:
        """Return the frames still held (end of stream); the session is not used afterwards."""
        ...


class DecoderBackend(Protocol):
    """Creates decoder sessions; `load_backend` gives the PyNvVideoCodec one."""

    def open(self, codec: str) -> DecoderSession: ...


_PRIMARY_CONTEXTS: dict[int, int] = {}  # gpu id -> handle: fixed for the life of the process


def primary_context(torch: Any, gpu_id: int) -> int:
    """The handle of the device's primary CUDA context (torch's), made current on this thread.

    The device-wide synchronize that initialises it runs once per GPU: a file that loops or a
    camera that reconnects opens a new session, and a sync per session stalled every stream."""
    torch.cuda.set_device(gpu_id)
    if gpu_id in _PRIMARY_CONTEXTS:
        return _PRIMARY_CONTEXTS[gpu_id]
    torch.cuda.synchronize(gpu_id)  # initialises the primary context if nothing has yet
    lib = ctypes.CDLL("libcuda.so.1")
    ctx = ctypes.c_void_p()
    rc = lib.cuCtxGetCurrent(ctypes.byref(ctx))
    if rc != 0 or not ctx.value:
        raise OperatorError(f"decode.nvdec: no CUDA context current on GPU {gpu_id} (cuCtxGetCurrent: {rc})")
    _PRIMARY_CONTEXTS[gpu_id] = int(ctx.value)
    return int(ctx.value)


class _NvSession:
    """A PyNvVideoCodec decoder with RGB device output, and a CUDA stream for copying frames."""

    def __init__(self, backend: NvBackend, codec: str) -> None:
        nvc, torch = backend.nvc, backend.torch
        self.nvc, self.torch, self.low_latency = nvc, torch, backend.low_latency
        self.copy_stream: Any = torch.cuda.Stream(device=backend.device)
        kwargs: dict[str, Any] = {
            "gpuid": backend.gpu_id,
            "codec": getattr(nvc.cudaVideoCodec, CODECS[codec]),
            # torch's own (primary) context and a torch stream: with cudacontext=0 every decoder
            # got a context of its own, and the GPU time-sliced between them and torch's (an H100
            # ran CenterFace 100x slower inside the graph than alone)
            "cudacontext": primary_context(torch, backend.gpu_id),
            "cudastream": self.copy_stream.cuda_stream,
            "usedevicememory": True,
            "outputColorType": nvc.OutputColorType.RGB,
        }
        if self.low_latency:
            kwargs["latency"] = nvc.DisplayDecodeLatencyType.LOW
        self.decoder: Any = nvc.CreateDecoder(**kwargs)
        self.payload: Any = None  # the packet's bytes stay alive until the next submit

    def decode(self, payload: bytes, key: int) -> list[tuple[int | None, Any]]:
        arr = np.frombuffer(payload, np.uint8)
        self.payload = arr
        pd = self.nvc.PacketData()
        pd.bsl_data = arr.ctypes.data
        pd.bsl = arr.size
        pd.pts = key
        if self.low_latency:
            pd.decode_flag = self.nvc.VideoPacketFlag.ENDOFPICTURE
        return self._images(self.decoder.Decode(pd))

    def flush(self) -> list[tuple[int | None, Any]]:
        pd = self.nvc.PacketData()
        pd.bsl_data = 0
        pd.bsl = 0
        return self._images(self.decoder.Decode(pd))

    def _images(self, frames: Any) -> list[tuple[int | None, Any]]:
        """Copies of the decoder's surfaces (it reuses them), complete when this returns."""
        if not frames:
            return []
        torch = self.torch
        out: list[tuple[int | None, Any]] = []
        with torch.cuda.stream(self.copy_stream):
            for f in frames:
                image = torch.from_dlpack(f)
                if image.ndim != 3 or image.shape[2] != 3:
                    raise OperatorError(
                        f"decode.nvdec: the decoder returned a {tuple(image.shape)} surface, not RGB "
                        "(H, W, 3); this PyNvVideoCodec does not honour OutputColorType.RGB"
                    )
                out.append((_frame_key(f), image.clone(memory_format=torch.contiguous_format)))
        self.copy_stream.synchronize()
        return out


def _frame_key(frame: Any) -> int | None:
    """The timestamp the decoder carried from the packet to this frame (None: unknown)."""
    getter = getattr(frame, "getPTS", None)
    try:
        value = getter() if callable(getter) else getattr(frame, "timestamp", None)
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


class NvBackend:
    """PyNvVideoCodec and torch on one GPU."""

    def __init__(self, gpu_id: int, low_latency: bool) -> None:
        from engine.device import cuda_reason, import_error

        why = cuda_reason() or import_error("PyNvVideoCodec")
        if why is not None:
            raise OperatorError(f"decode.nvdec cannot run: {why}; use decode.pyav on this machine")
        import PyNvVideoCodec as nvc
        import torch

        if gpu_id >= torch.cuda.device_count():
            raise OperatorError(f"decode.nvdec: gpu_id {gpu_id}, but {torch.cuda.device_count()} GPU(s) here")
        self.nvc: Any = nvc
        self.torch: Any = torch
        self.gpu_id = gpu_id
        self.device: Any = torch.device("cuda", gpu_id)
        self.low_latency = low_latency

    def open(self, codec: str) -> DecoderSession:
        return _NvSession(self, codec)


def load_backend(config: NvDecodeConfig) -> DecoderBackend:
    """The PyNvVideoCodec backend; OperatorError naming what is missing. Tests replace this."""
    return NvBackend(config.gpu_id, config.latency == "low")


# ---------------------------------------------------------------------------------------------
# Per-stream state and the operator


class _StreamDecoder:
    """One stream's session, Annex B rewriter, and the packets awaiting their frames."""

    def __init__(self, info: StreamInfo, cfg: NvDecodeConfig, backend: DecoderBackend) -> None:
        self.info = info
        self.cfg = cfg
        self.backend = backend
        self.annexb = AnnexB(info.codec, info.extradata)
        self.session = backend.open(info.codec)
        self.pending: OrderedDict[int, tuple[int | None, int, Any]] = OrderedDict()
        self.next_key = 1
        self.seq = 0
        self.corrupt_packets = 0
        self.errors_in_row = 0
        self.broken = False  # a packet failed: frames until the next keyframe are suspect
        self.need_keyframe = False  # the decoder was replaced: skip packets until a keyframe
        self.skipped = 0
        self.suspect: set[int] = set()
        self.error_kinds: set[str] = set()  # exception types logged at warning level once

    def decode(self, packet: Packet | None) -> tuple[list[Frame], int]:
        """Frames the packet completes (None flushes) and how many suspect frames were dropped."""
        if packet is None:
            return self._frames(self.session.flush())
        if self.need_keyframe and not packet.keyframe:
            self.skipped += 1  # a new decoder after errors: nothing decodes before a keyframe
            return [], 0
        key = self.next_key
        self.next_key += 1
        try:
            payload = self.annexb.convert(_packet_bytes(packet.data), packet.keyframe)
            self.pending[key] = (packet.pts, packet.capture_ns, packet.trace)
            if self.broken and not packet.keyframe:
                self.suspect.add(key)
            ready = self.session.decode(payload, key)
        except OperatorError:  # the set-up is wrong (e.g. a surface that is not RGB): not the data
            self.pending.pop(key, None)
            raise
        except Exception as e:  # undecodable data; the decoder may also be wedged
            self._failed(key, e)
            return [], 0
        self.errors_in_row = 0
        if packet.keyframe:
            self.broken = self.need_keyframe = False
        return self._frames(ready, packet)

    def _failed(self, key: int, error: Exception) -> None:
        self.pending.pop(key, None)
        self.suspect.discard(key)
        self.corrupt_packets += 1
        self.errors_in_row += 1
        self.broken = True
        kind = type(error).__name__
        if kind not in self.error_kinds:  # the first of each kind is worth a warning: a CUDA error
            self.error_kinds.add(kind)  # (out of memory, illegal address) looks the same from here
            log.warning(
                "%s: decode failed (%s: %s); counted as a corrupt packet (more like it at debug level)",
                self.info.stream_id,
                kind,
                error,
            )
        else:
            log.debug("%s: undecodable packet: %s", self.info.stream_id, error)
        if self.errors_in_row >= MAX_ERRORS_IN_ROW:
            log.warning(
                "%s: %d undecodable packets in a row (%s); starting a new decoder",
                self.info.stream_id,
                self.errors_in_row,
                error,
            )
            self.errors_in_row = 0
            self.pending.clear()
            self.suspect.clear()
            self.session = self.backend.open(self.info.codec)
            self.need_keyframe = True

    def _frames(
        self, ready: list[tuple[int | None, Any]], packet: Packet | None = None
    ) -> tuple[list[Frame], int]:
        out: list[Frame] = []
        dropped = 0
        for key, image in ready:
            entry = self.pending.pop(key, None) if key is not None else None
            if entry is None and self.pending:  # the decoder lost the tag: frames are in decode order
                key, entry = self.pending.popitem(last=False)
            if entry is None:
                fallback_ns = packet.capture_ns if packet is not None else now_ns()
                entry = (None, fallback_ns, None)
            pts, capture_ns, trace = entry
            corrupt = key is not None and key in self.suspect
            if key is not None:
                self.suspect.discard(key)
            if corrupt and self.cfg.on_corrupt == "drop":
                dropped += 1
                continue
            frame = Frame(self.info.stream_id, self.seq, pts, capture_ns, image, self.cfg.pixel_format)
            frame.trace = trace
            if corrupt:
                frame.degraded.add("corrupt")
            out.append(frame)
            self.seq += 1
        if len(self.pending) > MAX_PENDING:  # packets that never gave a frame: forget the oldest
            for stale in list(self.pending)[: -MAX_PENDING // 2]:
                del self.pending[stale]
                self.suspect.discard(stale)
        return out, dropped


def _packet_bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


class NvDecode(Operator[NvDecodeConfig]):
    """H.264/HEVC/AV1 packets in, CUDA RGB frames (torch, H x W x 3 uint8) out, on NVDEC."""

    consumes, produces = "packets", "frames"
    Config = NvDecodeConfig

    def __init__(self, config: NvDecodeConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.backend: DecoderBackend | None = None
        self.decoders: dict[str, _StreamDecoder] = {}
        self.threads: dict[str, ThreadPoolExecutor] = {}

    async def setup(self) -> None:
        self.backend = await self.ctx.run_blocking(load_backend, self.config)

    async def teardown(self) -> None:
        self.decoders.clear()
        for pool in self.threads.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.threads.clear()

    async def _on_thread(self, stream_id: str, fn: Any, *args: Any) -> Any:
        pool = self.threads.get(stream_id)
        if pool is None:
            pool = self.threads[stream_id] = ThreadPoolExecutor(1, f"nvdec-{stream_id}")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def on_stream_start(self, info: StreamInfo) -> None:
        if info.codec not in CODECS:
            raise OperatorError(
                f"decode.nvdec: stream {info.stream_id} is {info.codec!r}; NVDEC here takes "
                f"{', '.join(CODECS)} (use decode.pyav for this stream)"
            )
        if self.backend is None:
            raise OperatorError("decode.nvdec: stream started before setup")
        self.decoders[info.stream_id] = await self._on_thread(
            info.stream_id, _StreamDecoder, info, self.config, self.backend
        )

    async def on_stream_reset(self, info: StreamInfo) -> Sequence[Item]:
        """Flush the old decoder; a new one continues the stream's frame numbering."""
        old = self.decoders.pop(info.stream_id, None)
        tail: list[Frame] = []
        if old is not None:
            tail = await self._flush(old)
        await self.on_stream_start(info)
        if old is not None:
            self.decoders[info.stream_id].seq = old.seq
        return tail

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        decoder = self.decoders.pop(stream_id, None)
        try:
            return await self._flush(decoder) if decoder is not None else ()
        finally:
            pool = self.threads.pop(stream_id, None)
            if pool is not None:
                pool.shutdown(wait=False)

    async def _flush(self, decoder: _StreamDecoder) -> list[Frame]:
        try:
            frames, dropped = await self._on_thread(decoder.info.stream_id, decoder.decode, None)
        except Exception as e:  # a wedged decoder loses its tail, not the stream
            log.warning("%s: decoder flush failed: %s", decoder.info.stream_id, e)
            return []
        self._count_corrupt(decoder.info.stream_id, dropped)
        frames_out: list[Frame] = frames
        return frames_out

    def _count_corrupt(self, stream_id: str, dropped: int) -> None:
        if dropped:
            self.ctx.metrics.drop(stream_id, "corrupt_frame", dropped)

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Packet):
            raise TypeError(f"decode.nvdec takes packets, got {type(item).__name__}")
        decoder = self.decoders.get(item.stream_id)
        if decoder is None:
            self.ctx.metrics.drop(item.stream_id, "no_stream_start")
            return ()
        before = (decoder.corrupt_packets, decoder.skipped)
        frames: list[Frame]
        frames, dropped = await self._on_thread(item.stream_id, decoder.decode, item)
        if decoder.corrupt_packets != before[0]:
            self.ctx.metrics.drop(item.stream_id, "corrupt_packet")
        if decoder.skipped != before[1]:
            self.ctx.metrics.drop(item.stream_id, "awaiting_keyframe")
        self._count_corrupt(item.stream_id, dropped)
        kept = sum(1 for f in frames if "corrupt" in f.degraded)
        if kept:
            self.ctx.metrics.events["corrupt_frames_kept"] += kept
        return frames
