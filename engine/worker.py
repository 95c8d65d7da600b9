"""A worker: runs one graph and takes its streams from a registry, one lease per stream.

Every tick it heartbeats, renews the leases it holds (stopping a stream at once if another
worker holds it, or before its lease could expire when Redis cannot be reached), releases what
was removed or is beyond its fair share, and claims unowned streams up to that share.
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
    ) -> None:
        self.static_sources = [s.spec.model_dump(exclude_none=True) for s in plan.sources]
        self.runtime = Runtime(replace(plan, sources=[]), replace(options, keep_alive=True))
        self.store = store
        self.worker_id = worker_id
        self.lease_ttl_s = lease_ttl_s
        self.tick_s = lease_ttl_s / 5
        self.owned: dict[str, float] = {}  # stream id -> when its lease was last renewed
        self.running_specs: dict[str, dict[str, Any]] = {}
        self.epoch: str | None = None
        self.claim_after = 0.0  # monotonic time before which this worker claims nothing new
        self.ready = False
        self.store_ok = False
        self.errors: dict[str, str] = {}  # stream id -> why it could not start

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
            known = await store.desired()
            for spec in [*self.static_sources, *self.running_specs.values()]:
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
        if time.monotonic() < self.claim_after:
            return
        share = math.ceil(len(desired) / max(1, len(await store.live_workers())))
        if len(self.owned) > share:  # a worker joined: hand one stream back per tick
            await self._drop(sorted(self.owned)[-1], release=True)
        for sid in sorted(desired, key=lambda s: zlib.crc32(f"{wid}:{s}".encode())):
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
            self.errors[sid] = scrub(str(e))  # the API shows it: a URL in it loses its password
            log.error("worker %s: stream %s cannot start: %s", self.worker_id, sid, self.errors[sid])
            await self.store.release(sid, self.worker_id)
            return
        self.errors.pop(sid, None)
        self.owned[sid] = time.monotonic()
        self.running_specs[sid] = spec
        log.info("worker %s: started stream %s", self.worker_id, sid)

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
