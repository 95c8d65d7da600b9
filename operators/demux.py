"""PyAV demuxing shared by file and RTSP sources (and by the NVDEC path): packets + stream info."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import av.error

from engine.errors import SourceError
from engine.frame import StreamInfo
from operators.urls import redact_url, scrub

log = logging.getLogger("framegraph.demux")
MAX_CONSECUTIVE_ERRORS = 50


class Demuxer:
    """An open container and its first video stream. Blocking: call from a thread."""

    def __init__(
        self,
        stream_id: str,
        url: str,
        options: dict[str, str] | None = None,
        timeout_s: tuple[float, float] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.safe_url = redact_url(url)
        self.read_timeout_s = timeout_s[1] if timeout_s else None
        self.corrupt = 0
        try:
            self.container: Any = av.open(url, options=options or {}, timeout=timeout_s)
        except (av.error.FFmpegError, OSError) as e:
            # `from None`: PyAV's error holds the raw URL (its password); the reason is scrubbed
            where = ""
            if "://" not in url and not os.path.isabs(url) and not os.path.exists(url):
                where = f" (a relative path: from the working directory {os.getcwd()})"
            raise SourceError(f"{stream_id}: cannot open {self.safe_url}: {_reason(e)}{where}") from None
        videos = [s for s in self.container.streams if s.type == "video"]
        if not videos:
            self.container.close()
            raise SourceError(f"{stream_id}: {self.safe_url} has no video stream")
        self.stream: Any = videos[0]

    def info(self) -> StreamInfo:
        s = self.stream
        cc: Any = s.codec_context
        rate = s.average_rate or s.guessed_rate or 0
        return StreamInfo(
            stream_id=self.stream_id,
            codec=cc.name,
            width=cc.width,
            height=cc.height,
            fps=float(rate),
            time_base=s.time_base or Fraction(1, 90000),
            extradata=bytes(cc.extradata) if cc.extradata else None,
            url=self.safe_url,
        )

    def packets(self) -> Iterator[Any]:
        """Video packets with data; corrupt reads are counted and skipped, not fatal."""
        errors = 0
        while True:
            try:
                for packet in self.container.demux(self.stream):
                    errors = 0
                    if packet.size:
                        yield packet
                return
            except av.error.EOFError:
                return
            except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as e:
                self.corrupt += 1
                errors += 1
                if errors >= MAX_CONSECUTIVE_ERRORS:
                    raise SourceError(f"{self.stream_id}: unreadable data: {_reason(e)}") from None
                log.warning("%s: skipped unreadable data: %s", self.stream_id, _reason(e))
            except (av.error.FFmpegError, OSError) as e:  # timeouts, resets: the caller reconnects
                if isinstance(e, av.error.ExitError) and self.read_timeout_s:  # PyAV's read timeout
                    why = f"no data for {self.read_timeout_s:g} s (read_timeout_s): the stream stalled"
                    raise SourceError(f"{self.stream_id}: read failed: {why}") from None
                raise SourceError(f"{self.stream_id}: read failed: {_reason(e)}") from None

    def close(self) -> None:
        try:
            self.container.close()
        except av.error.FFmpegError as e:  # closing a broken connection may fail; harmless
            log.debug("%s: close failed: %s", self.stream_id, e)


def _reason(e: BaseException) -> str:
    return scrub(str(getattr(e, "strerror", None) or e))
