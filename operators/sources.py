"""Sources: files (optionally looped and paced like a camera) and RTSP cameras (reconnecting)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from engine.errors import SourceError
from engine.frame import Control, ControlKind, Packet, StreamInfo, now_ns
from engine.registry import Emit, Source, SourceContext
from engine.spec import StrictModel
from operators.demux import Demuxer
from operators.urls import redact_url, scrub

log = logging.getLogger("framegraph.sources")
_DONE = object()


class _Reader:
    """Pulls packets from a Demuxer on a private thread, one `await` per packet."""

    def __init__(self, stream_id: str) -> None:
        self._pool = ThreadPoolExecutor(1, f"demux-{stream_id}")

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _next(it: Any) -> Any:
    return next(it, _DONE)


class _PacketSource(Source[Any]):
    """Shared emit loop: numbering, capture time, frame limit, corrupt-read counting."""

    produces = "packets"  # engine/kinds.py

    def __init__(self, config: Any, ctx: SourceContext) -> None:
        super().__init__(config, ctx)
        self.seq = 0
        self.started = False

    def open_args(self) -> tuple[dict[str, str], tuple[float, float] | None]:
        """FFmpeg options and (open, read) timeouts for opening this source."""
        return {}, None

    async def probe(self) -> str | None:
        """Open the stream, read its first packet, and describe it ("h264 1920x1080 at 30 fps")."""
        options, timeout = self.open_args()

        def look() -> str:
            demuxer = Demuxer(self.ctx.stream_id, self.ctx.url, options, timeout)
            try:
                info = demuxer.info()
                if next(iter(demuxer.packets()), None) is None:
                    raise SourceError(f"{self.ctx.stream_id}: {demuxer.safe_url} opened, but sent no packet")
                return f"{info.codec} {info.width}x{info.height} at {info.fps:g} fps"
            finally:
                demuxer.close()

        return await asyncio.to_thread(look)

    def limit_reached(self) -> bool:
        return self.ctx.max_frames is not None and self.seq >= self.ctx.max_frames

    async def announce(self, emit: Emit, info: StreamInfo) -> None:
        kind = ControlKind.RESET if self.started else ControlKind.START
        self.started = True
        await emit(Control(kind, self.ctx.stream_id, info))

    async def pump(self, emit: Emit, demuxer: Demuxer, reader: _Reader, pace: bool) -> bool:
        """Emit packets until the container ends (True) or the source must stop (False)."""
        it = demuxer.packets()
        t0_ns: int | None = None
        pts0 = 0
        tb = float(demuxer.stream.time_base or 0)
        corrupt_seen = demuxer.corrupt
        while not self.ctx.stop.is_set():
            if self.limit_reached():
                return False
            packet = await reader.call(_next, it)
            if demuxer.corrupt != corrupt_seen:
                self.ctx.metrics.drop(self.ctx.stream_id, "corrupt_read", demuxer.corrupt - corrupt_seen)
                corrupt_seen = demuxer.corrupt
            if packet is _DONE:
                return True
            if pace and packet.pts is not None and tb:
                if t0_ns is None:
                    t0_ns, pts0 = time.monotonic_ns(), packet.pts
                due_s = (t0_ns + (packet.pts - pts0) * tb * 1e9 - time.monotonic_ns()) / 1e9
                if due_s > 0:
                    await asyncio.sleep(due_s)
            await emit(Packet(self.ctx.stream_id, self.seq, packet.pts, now_ns(), packet, packet.is_keyframe))
            self.seq += 1
        return False


class FileConfig(StrictModel):
    """Options of `source.file`."""

    loop: bool = Field(False, description="Start again at the end, forever (a stand-in camera).")
    realtime: bool = Field(False, description="Pace packets at the file's frame rate, like a camera.")


class FileSource(_PacketSource):
    """Any file or URL FFmpeg reads; a missing or unreadable file ends the stream with an error."""

    Config = FileConfig
    config: FileConfig

    async def run(self, emit: Emit) -> None:
        reader = _Reader(self.ctx.stream_id)
        try:
            while True:
                demuxer = await reader.call(Demuxer, self.ctx.stream_id, self.ctx.url)
                try:
                    await self.announce(emit, demuxer.info())
                    ended = await self.pump(emit, demuxer, reader, self.config.realtime)
                finally:
                    await reader.call(demuxer.close)
                if not (ended and self.config.loop):
                    break
        except SourceError as e:
            error = scrub(str(e))
            self.ctx.metrics.errors += 1
            self.ctx.metrics.source_failed(error)
            log.error("%s", error)
            await emit(Control(ControlKind.END, self.ctx.stream_id, reason=error))
            return
        finally:
            reader.close()
        await emit(Control(ControlKind.END, self.ctx.stream_id, reason="end of file"))


class RtspConfig(StrictModel):
    """Options of `source.rtsp`: transport, timeouts and the reconnect policy."""

    transport: Literal["tcp", "udp"] = Field("tcp", description="tcp survives lossy networks.")
    open_timeout_s: float = Field(5.0, gt=0, description="Give up connecting after this long.")
    read_timeout_s: float = Field(
        3.0, gt=0, description="Stall watchdog: no packet for this long means reconnect."
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="First wait before reconnecting.")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between reconnects.")
    backoff_jitter: float = Field(0.2, ge=0, le=1, description="Random +-fraction on each wait.")
    max_reconnects: int | None = Field(None, ge=0, description="None: retry forever.")


class RtspSource(_PacketSource):
    """An RTSP camera: reconnects with exponential backoff and jitter, forever by default."""

    Config = RtspConfig
    config: RtspConfig

    def open_args(self) -> tuple[dict[str, str], tuple[float, float] | None]:
        cfg = self.config
        return {"rtsp_transport": cfg.transport}, (cfg.open_timeout_s, cfg.read_timeout_s)

    async def run(self, emit: Emit) -> None:
        cfg = self.config
        reader = _Reader(self.ctx.stream_id)
        options, timeout = self.open_args()
        failures = 0
        reconnects = 0
        safe = redact_url(self.ctx.url)
        for counter in ("disconnects", "connect_failures"):  # exported at 0 from the start (alerts)
            self.ctx.metrics.events[counter] += 0
        last_error = ""  # why the last connection failed or ended (scrubbed), for the stream's state
        lost_at: float | None = None  # when LOST was sent for this outage (once, not once per retry)
        try:
            while not self.ctx.stop.is_set() and not self.limit_reached():
                try:
                    demuxer = await reader.call(Demuxer, self.ctx.stream_id, self.ctx.url, options, timeout)
                except SourceError as e:
                    failures += 1
                    last_error = scrub(str(e))
                    self.ctx.metrics.events["connect_failures"] += 1
                    log.warning("%s (attempt %d)", last_error, failures)
                else:
                    if lost_at is not None:  # say it is back, not only that it went
                        away_s = time.monotonic() - lost_at
                        log.warning("%s: %s reconnected after %.1f s", self.ctx.stream_id, safe, away_s)
                        lost_at = None
                    failures = 0
                    last_error = f"{self.ctx.stream_id}: {safe} disconnected"
                    try:
                        await self.announce(emit, demuxer.info())
                        await self.pump(emit, demuxer, reader, pace=False)
                    except SourceError as e:  # its text names the stream and says "read failed"
                        last_error = scrub(str(e))
                        log.warning("%s", last_error)
                    finally:
                        await reader.call(demuxer.close)
                    if self.ctx.stop.is_set() or self.limit_reached():
                        break
                    self.ctx.metrics.events["disconnects"] += 1
                    log.warning("%s: %s disconnected; reconnecting", self.ctx.stream_id, safe)
                reconnects += 1
                if cfg.max_reconnects is not None and reconnects > cfg.max_reconnects:
                    last = last_error.removeprefix(f"{self.ctx.stream_id}: ")
                    raise SourceError(
                        f"{self.ctx.stream_id}: gave up after {cfg.max_reconnects} reconnects (last: {last})"
                    )
                self.ctx.metrics.source_retrying(last_error)
                if lost_at is None:  # downstream hears of the outage now, not when it is over
                    lost_at = time.monotonic()
                    await emit(Control(ControlKind.LOST, self.ctx.stream_id, reason=last_error))
                await self._backoff(failures)
        except SourceError as e:
            error = scrub(str(e))
            self.ctx.metrics.errors += 1
            self.ctx.metrics.source_failed(error)
            log.error("%s", error)
            await emit(Control(ControlKind.END, self.ctx.stream_id, reason=error))
            return
        finally:
            reader.close()
        await emit(Control(ControlKind.END, self.ctx.stream_id, reason="stopped"))

    async def _backoff(self, failures: int) -> None:
        cfg = self.config
        base = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** max(0, failures - 1))
        wait = base * (1 + random.uniform(-cfg.backoff_jitter, cfg.backoff_jitter))
        try:
            await asyncio.wait_for(self.ctx.stop.wait(), wait)
        except TimeoutError:
            return
