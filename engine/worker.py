"""A worker: runs one graph and takes its streams from a registry, one lease per stream.

Every tick it heartbeats, renews the leases it holds (stopping a stream at once if another
worker holds it, or before its lease could expire when Redis cannot be reached), releases what
was removed or is beyond its fair share, hands back streams that failed (held back from every
worker until `failed_retry_s` has passed, then tried again), publishes the status of what it
runs (every worker's API shows every stream), and claims unowned streams up to its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from dataclasses import replace
from typing import Any

from engine.errors import FramegraphError
from engine.metrics import StreamState
from engine.plan import GraphPlan, source_plan
from engine.runtime import RunOptions, Runtime
from engine.store import StreamStore
from operators.urls import scrub

log = logging.getLogger("framegraph.worker")
SAFETY = 0.7  # stop a stream whose lease was last renewed this share of the TTL ago


class Worker:
    """One graph, many streams, coordinated through a StreamStore."""

    def __init__(
        self,
        plan: GraphPlan,
        options: RunOptions,
        store: StreamStore,
        worker_id: str,
        lease_ttl_s: float = 5.0,
        failed_retry_s: float = 60.0,
    ) -> None:
        self.static_sources = [s.spec.model_dump(exclude_none=True) for s in plan.sources]
        self.runtime = Runtime(replace(plan, sources=[]), replace(options, keep_alive=True))
        self.store = store
        self.worker_id = worker_id
        self.lease_ttl_s = lease_ttl_s
        self.tick_s = lease_ttl_s / 5
        self.failed_retry_s = failed_retry_s
        self.owned: dict[str, float] = {}  # stream id -> when its lease was last renewed
        self.running_specs: dict[str, dict[str, Any]] = {}
        self.epoch: str | None = None
        self.claim_after = 0.0  # monotonic time before which this worker claims nothing new
        self.ready = False
        self.store_ok = False
        self.held_failed: set[str] = set()  # failed streams held back from every worker (/metrics)

    async def run(self) -> dict[str, Any]:
        """Run until `stop()`; returns the runtime's summary."""
        graph = asyncio.create_task(self.runtime.run())
        try:
            while not self.runtime.stop_event.is_set():
                if graph.done():
                    break
                try:
                    await self.tick()
                    self.ready = True
                except Exception as e:  # the store is down: streams keep their leases for now
                    self.store_ok = False
                    log.warning("worker %s: registry unreachable: %s", self.worker_id, e)
                    await self._expire_unrenewed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.runtime.stop_event.wait(), self.tick_s)
        finally:
            self.runtime.stop()  # every stream ends and drains; then the leases go back
            summary = await graph
            for sid in list(self.owned):
                with contextlib.suppress(Exception):  # unreleased leases expire by themselves
                    await self.store.release(sid, self.worker_id)
            await self.store.close()
        return summary

    def stop(self) -> None:
        self.runtime.stop()

    async def tick(self) -> None:
        store, wid, ttl = self.store, self.worker_id, self.lease_ttl_s
        epoch = await store.epoch()
        if epoch != self.epoch:  # a new registry (first tick, or Redis lost it): (re)register
            for spec in self.static_sources:  # once per registry: a removal through the API stands
                await store.seed(spec)
            known = await store.desired()
            for spec in self.running_specs.values():
                if spec["id"] not in known:
                    await store.put(spec)
            if self.epoch is not None:
                # the leases were lost with the registry while their holders still run them: claim
                # nothing until every holder has had a full TTL to take its leases back
                self.claim_after = time.monotonic() + ttl
            self.epoch = epoch
        await store.heartbeat(wid, ttl)
        self.store_ok = True
        desired = await store.desired()
        for sid in list(self.owned):
            if sid not in desired:
                await self._drop(sid, release=True)
            elif not await store.renew(sid, wid, ttl):
                log.warning("worker %s: stream %s is held by another worker: stopping it", wid, sid)
                await self._drop(sid, release=False)
            elif desired[sid] != self.running_specs.get(sid):
                await self._drop(sid, release=False)  # updated: restart with the new spec
                await self._start(sid, desired[sid])
            else:
                self.owned[sid] = time.monotonic()
        for sid in list(self.owned):
            stream = self.runtime.metrics.streams.get(sid)
            if sid in self.runtime.streams and stream is not None and stream.state is StreamState.FAILED:
                await self._fail(sid, stream.error or "failed")
        await store.put_statuses({sid: self.stream_status(sid) for sid in self.owned}, ttl * 2)
        failed = await store.failed()
        self.held_failed = set(failed) & set(desired)
        if time.monotonic() < self.claim_after:
            return
        claimable = [sid for sid in desired if sid not in failed]
        share = math.ceil(len(claimable) / max(1, len(await store.live_workers())))
        if len(self.owned) > share:  # a worker joined: hand one stream back per tick
            await self._drop(sorted(self.owned)[-1], release=True)
        for sid in sorted(claimable, key=lambda s: zlib.crc32(f"{wid}:{s}".encode())):
            if len(self.owned) >= share:
                break
            if sid not in self.owned and await store.claim(sid, wid, ttl):
                await self._start(sid, desired[sid])

    async def _expire_unrenewed(self) -> None:
        now = time.monotonic()
        for sid, renewed in list(self.owned.items()):
            if now - renewed > self.lease_ttl_s * SAFETY:
                log.warning("worker %s: lease of %s not renewed in time: stopping it", self.worker_id, sid)
                await self._drop(sid, release=False)

    async def _start(self, sid: str, spec: dict[str, Any]) -> None:
        try:
            plan = source_plan(spec, origin=f"stream {sid}")
            self.runtime.add_stream(plan)
        except FramegraphError as e:
            if self.runtime.stop_event.is_set():  # stopping (a rolling restart): not the stream's fault
                await self.store.release(sid, self.worker_id)
                return
            error = scrub(str(e))  # the API shows it: a URL in it loses its password
            log.error("worker %s: stream %s cannot start: %s", self.worker_id, sid, error)
            await self._mark_failed(sid, error)
            await self.store.release(sid, self.worker_id)
            return
        self.owned[sid] = time.monotonic()
        self.running_specs[sid] = spec
        log.info("worker %s: started stream %s", self.worker_id, sid)

    async def _fail(self, sid: str, error: str) -> None:
        """The stream's source gave up: hand it back, held back from every worker for a while."""
        log.warning(
            "worker %s: stream %s failed (%s); trying it again in %gs",
            self.worker_id,
            sid,
            error,
            self.failed_retry_s,
        )
        await self._mark_failed(sid, error)  # before the release: no worker takes it meanwhile
        await self._drop(sid, release=True)

    async def _mark_failed(self, sid: str, error: str) -> None:
        info = {"error": error, "worker": self.worker_id, "retry_at": time.time() + self.failed_retry_s}
        await self.store.mark_failed(sid, info, self.failed_retry_s)

    def stream_status(self, sid: str) -> dict[str, Any]:
        """A stream this worker runs as the API shows it (the StreamStatus fields but id, url, op);
        published to the registry every tick so that every worker's API can show it."""
        m = self.runtime.metrics
        out: dict[str, Any] = {"owner": self.worker_id, "state": "starting"}
        s = m.streams.get(sid)
        if s is None or sid not in self.runtime.streams:
            return out
        source = m.nodes.get(sid)
        events = source.events if source is not None else {}
        out.update(
            state=s.state.value,
            error=scrub(s.error) if s.error else None,
            frames_in=s.frames_in,
            frames_out=s.frames_out,
            fps=round(s.fps(), 2),
            latency_p95_ms=s.latency.percentiles()["p95"],
            dropped=m.dropped_for(sid),
            reconnects=events.get("disconnects", 0) + events.get("connect_failures", 0),
        )
        return out

    async def _drop(self, sid: str, release: bool) -> None:
        self.owned.pop(sid, None)
        self.running_specs.pop(sid, None)
        if sid in self.runtime.streams:
            await self.runtime.remove_stream(sid)
        if release:
            try:
                await self.store.release(sid, self.worker_id)
            except Exception as e:  # the lease expires by itself
                log.debug("release of %s failed: %s", sid, e)
        log.info("worker %s: stopped stream %s", self.worker_id, sid)
