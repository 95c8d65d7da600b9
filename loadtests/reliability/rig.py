"""The servers of one run (RTSP, Triton, broker), the consumer reading the events, and the plan."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from typing import Any

from loadtests.reliability import media
from loadtests.reliability.consumer import EventReader, create_topic
from loadtests.reliability.options import Options
from loadtests.reliability.services import Broker, RtspServer, Triton
from loadtests.reliability.session import GraphInfo, Session, Timeline, plan_with_probe

log = logging.getLogger("reliability")


class Rig:
    """Starts what the graph needs, privately, on loopback; `close()` stops all of it."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.out = opts.out
        for old in ("video", "spool", "media", "logs"):  # a previous run's files would count as this one's
            shutil.rmtree(opts.out / old, ignore_errors=True)
        self.logs = opts.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.video_dir = opts.out / "video"
        self.info = GraphInfo.inspect(opts.graph)
        self.clip = media.clip(
            opts.out.parent / ".media-cache", opts.width, opts.height, opts.fps, opts.clip_s
        )
        self.rtsp = RtspServer(opts.out / "media" / "main", self.logs, "rtsp-main")
        self.stall_rtsp: RtspServer | None = None
        self.triton: Triton | None = None
        self.broker: Broker | None = None
        self.reader: EventReader | None = None
        self.topic = f"reliability.{opts.mode}.{uuid.uuid4().hex[:8]}"
        self.timeline = Timeline(opts.out / "timeline.jsonl")
        self.origin_s = time.monotonic()
        self.startup_s: dict[str, float] = {}
        self.consumed: dict[str, Any] | None = None

    @property
    def kafka_node(self) -> str | None:
        return self.info.kafka[0] if self.info.kafka else None

    def triton_url(self) -> str | None:
        return self.opts.triton_url or (self.triton.url if self.triton else None)

    def camera(self, name: str, corrupt: bool = False, server: RtspServer | None = None) -> str:
        """Put a copy of the clip on a server as /<name> (optionally corrupted); its URL."""
        server = server or self.rtsp
        path = media.camera(server.media_dir, name, self.clip)
        if corrupt:
            media.corrupt(path)
        return server.url(name)

    async def start(self, stall_server: bool = False) -> None:
        async def timed(name: str, fn: Any) -> None:
            t0 = time.monotonic()
            await asyncio.to_thread(fn)
            self.startup_s[name] = round(time.monotonic() - t0, 2)

        jobs = [timed("rtsp", self.rtsp.start)]
        if stall_server:
            self.stall_rtsp = RtspServer(self.out / "media" / "stall", self.logs, "rtsp-stall")
            jobs.append(timed("rtsp_stall", self.stall_rtsp.start))
        if self.info.triton and not self.opts.triton_url:
            self.triton = Triton(f"reliability-{os.getpid()}", self.info.models)
            jobs.append(timed("triton", self.triton.start))
        if self.info.kafka:
            self.broker = Broker(self.logs)
            jobs.append(timed("broker", self.broker.start))
        await asyncio.gather(*jobs)
        if self.broker is not None:
            await asyncio.to_thread(create_topic, self.broker.bootstrap, self.topic)
            self.reader = EventReader(
                self.broker.bootstrap, self.topic, f"reliability-{self.topic}", self.logs / "consumer.log"
            )
        self.origin_s = time.monotonic()

    def session(self, phase: str) -> Session:
        """A fresh runtime over the graph (the run's servers, the probe, no sources yet)."""
        opts = self.opts
        bootstrap = self.broker.bootstrap if self.broker else None
        overrides = self.info.overrides(
            self.triton_url(), opts.detect_size, bootstrap, self.topic, self.out / "spool"
        )
        plan = plan_with_probe(opts.graph, overrides, self.origin_s)
        reader = self.reader
        return Session(
            plan,
            self.video_dir,
            self.timeline,
            self.origin_s,
            opts.sample_s,
            phase,
            self.kafka_node,
            (lambda: reader.unique) if reader else None,
        )

    def overrides(self) -> list[str]:
        """What the run changed in the graph (for the report; the Triton and broker are its own)."""
        return self.info.overrides(
            self.triton_url(),
            self.opts.detect_size,
            self.broker.bootstrap if self.broker else None,
            self.topic,
            self.out / "spool",
        )

    def finish_events(self, accepted: int, already_lost: int, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait until the consumer has read every event the graph accepted; what it read."""
        if self.reader is None:
            return {}
        t0 = time.monotonic()
        caught_up = self.reader.wait_for(accepted - already_lost, timeout_s)
        waited = round(time.monotonic() - t0, 2)
        self.consumed = self.reader.close()
        self.reader = None
        return {**self.consumed, "caught_up": caught_up, "waited_s": waited}

    def close(self) -> None:
        """Stop every server this run started (also after a failure)."""
        if self.reader is not None:
            try:
                self.consumed = self.reader.close()
            except Exception as e:  # the report is written anyway
                log.warning("event reader: %s", e)
            self.reader = None
        for server in (self.rtsp, self.stall_rtsp):
            if server is not None:
                server.kill()
        if self.broker is not None:
            self.broker.kill()
        if self.triton is not None:
            try:
                self.triton.stop()
            except Exception as e:
                log.warning("triton stop: %s", e)
