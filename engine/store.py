"""The registry of desired streams, and leases that give each stream to exactly one worker.

`MemoryStore` serves a single worker with no Redis. `RedisStore` shares the registry between
workers: a worker claims a stream with `SET NX PX` and renews the lease with a compare-and-
expire script; a worker that cannot renew stops the stream before its lease can expire, so no
stream is ever processed by two workers at once.

Besides the streams and leases the registry holds what every worker's API shows: each running
stream's latest status (written by its worker every tick, expiring with it), failed streams
(held back from every worker until their retry time), and which of a graph's own sources were
registered already (so that one removed through the API stays removed across restarts).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Protocol

_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not owner then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StreamStore(Protocol):
    """Desired streams (id -> source spec as a dict) and who runs them."""

    async def desired(self) -> dict[str, dict[str, Any]]: ...
    async def put(self, spec: dict[str, Any]) -> None: ...
    async def remove(self, stream_id: str) -> bool: ...
    async def claim(self, stream_id: str, worker_id: str, ttl_s: float) -> bool: ...
    async def renew(self, stream_id: str, worker_id: str, ttl_s: float) -> bool: ...
    async def release(self, stream_id: str, worker_id: str) -> None: ...
    async def owners(self) -> dict[str, str]: ...
    async def heartbeat(self, worker_id: str, ttl_s: float) -> None: ...
    async def live_workers(self) -> list[str]: ...
    async def epoch(self) -> str: ...
    async def close(self) -> None: ...
    async def seed(self, spec: dict[str, Any]) -> bool: ...
    async def put_statuses(self, statuses: dict[str, dict[str, Any]], ttl_s: float) -> None: ...
    async def statuses(self) -> dict[str, dict[str, Any]]: ...
    async def mark_failed(self, stream_id: str, info: dict[str, Any], hold_s: float) -> None: ...
    async def failed(self) -> dict[str, dict[str, Any]]: ...


class MemoryStore:
    """One worker, no Redis: the registry lives in this process; every lease is ours."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, str] = {}
        self._seeded: dict[str, dict[str, Any]] = {}
        self._statuses: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (expires, status)
        self._failed: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (retry time, why)

    async def desired(self) -> dict[str, dict[str, Any]]:
        return dict(self._specs)

    async def put(self, spec: dict[str, Any]) -> None:
        self._specs[spec["id"]] = spec
        self._failed.pop(spec["id"], None)  # a changed spec is tried at once

    async def remove(self, stream_id: str) -> bool:
        self._failed.pop(stream_id, None)
        self._statuses.pop(stream_id, None)
        return self._specs.pop(stream_id, None) is not None

    async def seed(self, spec: dict[str, Any]) -> bool:
        if self._seeded.get(spec["id"]) == spec:
            return False
        self._seeded[spec["id"]] = spec
        await self.put(spec)
        return True

    async def put_statuses(self, statuses: dict[str, dict[str, Any]], ttl_s: float) -> None:
        until = time.monotonic() + ttl_s
        self._statuses.update({sid: (until, st) for sid, st in statuses.items()})

    async def statuses(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {sid: st for sid, (until, st) in self._statuses.items() if until > now}

    async def mark_failed(self, stream_id: str, info: dict[str, Any], hold_s: float) -> None:
        self._failed[stream_id] = (time.monotonic() + hold_s, info)

    async def failed(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {sid: info for sid, (until, info) in self._failed.items() if until > now}

    async def claim(self, stream_id: str, worker_id: str, ttl_s: float) -> bool:
        return self._owners.setdefault(stream_id, worker_id) == worker_id

    async def renew(self, stream_id: str, worker_id: str, ttl_s: float) -> bool:
        return self._owners.get(stream_id) == worker_id

    async def release(self, stream_id: str, worker_id: str) -> None:
        if self._owners.get(stream_id) == worker_id:
            del self._owners[stream_id]

    async def owners(self) -> dict[str, str]:
        return dict(self._owners)

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        return None

    async def live_workers(self) -> list[str]:
        return ["local"]

    async def epoch(self) -> str:
        return "memory"

    async def close(self) -> None:
        return None


class RedisStore:
    """The shared registry in Redis: `fg:{ns}:streams` (hash), leases and worker heartbeats."""

    def __init__(self, url: str, namespace: str = "default") -> None:
        import redis.asyncio as aioredis

        self.redis: Any = aioredis.from_url(
            url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )
        self.prefix = f"fg:{namespace}"
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    def _lease(self, stream_id: str) -> str:
        return f"{self.prefix}:lease:{stream_id}"

    async def desired(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(f"{self.prefix}:streams")
        return {k: json.loads(v) for k, v in raw.items()}

    async def put(self, spec: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.prefix}:streams", spec["id"], json.dumps(spec))
            pipe.delete(f"{self.prefix}:failed:{spec['id']}")  # a changed spec is tried at once
            await pipe.execute()

    async def remove(self, stream_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.prefix}:streams", stream_id)
            pipe.delete(f"{self.prefix}:failed:{stream_id}", f"{self.prefix}:status:{stream_id}")
            removed, _ = await pipe.execute()
        return bool(removed)

    async def seed(self, spec: dict[str, Any]) -> bool:
        """Register a graph's own source unless this very spec was registered before (then a
        removal through the API stands); a source edited in the graph file is registered again."""
        text = json.dumps(spec, sort_keys=True)
        if await self.redis.hget(f"{self.prefix}:seeded", spec["id"]) == text:
            return False
        await self.put(spec)
        await self.redis.hset(f"{self.prefix}:seeded", spec["id"], text)
        return True

    async def put_statuses(self, statuses: dict[str, dict[str, Any]], ttl_s: float) -> None:
        if not statuses:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, st in statuses.items():
                pipe.set(f"{self.prefix}:status:{sid}", json.dumps(st), px=int(ttl_s * 1000))
            await pipe.execute()

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return await self._by_id("status")

    async def mark_failed(self, stream_id: str, info: dict[str, Any], hold_s: float) -> None:
        await self.redis.set(f"{self.prefix}:failed:{stream_id}", json.dumps(info), px=int(hold_s * 1000))

    async def failed(self) -> dict[str, dict[str, Any]]:
        return await self._by_id("failed")

    async def _by_id(self, kind: str) -> dict[str, dict[str, Any]]:
        keys = [k async for k in self.redis.scan_iter(f"{self.prefix}:{kind}:*")]
        values = await self.redis.mget(keys) if keys else []
        return {k.rsplit(":", 1)[1]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

    async def claim(self, stream_id: str, worker_id: str, ttl_s: float) -> bool:
        return bool(await self.redis.set(self._lease(stream_id), worker_id, nx=True, px=int(ttl_s * 1000)))

    async def renew(self, stream_id: str, worker_id: str, ttl_s: float) -> bool:
        """Extend our lease; re-take it if Redis lost it (a restart); False if another holds it."""
        return int(await self._renew(keys=[self._lease(stream_id)], args=[worker_id, int(ttl_s * 1000)])) > 0

    async def release(self, stream_id: str, worker_id: str) -> None:
        await self._release(keys=[self._lease(stream_id)], args=[worker_id])

    async def owners(self) -> dict[str, str]:
        keys = [k async for k in self.redis.scan_iter(f"{self.prefix}:lease:*")]
        values = await self.redis.mget(keys) if keys else []
        return {k.rsplit(":", 1)[1]: v for k, v in zip(keys, values, strict=True) if v}

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        now = time.time()
        key = f"{self.prefix}:workers"
        await self.redis.zadd(key, {worker_id: now})
        await self.redis.zremrangebyscore(key, 0, now - ttl_s)

    async def live_workers(self) -> list[str]:
        return sorted(await self.redis.zrange(f"{self.prefix}:workers", 0, -1))

    async def epoch(self) -> str:
        """The registry's identity: a new one means Redis lost it (restart) and workers re-register."""
        key = f"{self.prefix}:epoch"
        await self.redis.set(key, uuid.uuid4().hex, nx=True)
        return str(await self.redis.get(key))

    async def close(self) -> None:
        await self.redis.aclose()
