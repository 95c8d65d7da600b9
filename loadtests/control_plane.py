"""Failover time over repeated worker kills, and control-API latency under concurrent clients.

    python loadtests/control_plane.py [--kills 5] [--clients 50] [--requests 2000]

Three workers share nine synthetic streams through a private Redis; one worker is killed (-9)
and restarted, five times: failover is the time from the kill to the first frame of each of
its streams processed by another worker. Then 50 concurrent clients read GET /streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the harness lives with the tests
from tests.integration.test_workers import RedisServer, Workers, synthetic_stream, wait_until  # noqa: E402


def first_frames_elsewhere(workers: Workers, victim: str, streams: set[str], since_ns: int) -> float | None:
    firsts = {}
    for t, sid, wid in workers.records():
        if t > since_ns and wid != victim and sid in streams and sid not in firsts:
            firsts[sid] = t
    return (max(firsts.values()) - since_ns) / 1e9 if len(firsts) == len(streams) else None


async def api_latency(api: str, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:

        async def one_client(n: int) -> None:
            for _ in range(n):
                t = time.perf_counter()
                response = await client.get("/streams")
                response.raise_for_status()
                latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(requests // clients) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49], 2),
        "p95_ms": round(q[94], 2),
        "p99_ms": round(q[98], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=ROOT / "out/control_plane.json")
    args = parser.parse_args()
    redis_server = RedisServer()
    redis_server.start()
    tmp = Path(tempfile.mkdtemp(prefix="fg-control-"))
    workers = Workers(tmp, redis_server.url)
    result: dict[str, object] = {"lease_ttl_s": 3.0}
    try:
        for wid in ("w1", "w2", "w3"):
            workers.start(wid)
        api = f"http://127.0.0.1:{workers.ports['w2']}"
        wait_until(lambda: _ready(api), 60)
        for i in range(1, 9):
            body = synthetic_stream(f"s{i}", frames=10**8)
            httpx.post(f"{api}/streams", json=body, timeout=5).raise_for_status()
        failovers = []
        for _ in range(args.kills):
            wait_until(
                lambda: (
                    sorted(len(s) for s in workers.streams_of(time.time_ns() - 10**9).values()) == [3, 3, 3]
                ),
                60,
            )
            victim_streams = workers.streams_of(time.time_ns() - 10**9)["w1"]
            workers.procs["w1"].send_signal(signal.SIGKILL)
            workers.procs["w1"].wait()
            killed = time.time_ns()

            def moved(v: set[str] = victim_streams, k: int = killed) -> bool:
                return first_frames_elsewhere(workers, "w1", v, k) is not None

            wait_until(moved, 30)
            failovers.append(round(first_frames_elsewhere(workers, "w1", victim_streams, killed) or 0, 2))
            print(f"failover: {failovers[-1]} s", flush=True)
            workers.start("w1")
        result["failover_s"] = failovers
        result["failover_mean_s"] = round(statistics.mean(failovers), 2)
        result["api_get_streams"] = asyncio.run(api_latency(api, args.clients, args.requests))
        result["api_clients"] = args.clients
        print(json.dumps(result, indent=2))
    finally:
        workers.stop()
        redis_server.kill()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return 0


def spread(workers: Workers) -> list[int]:
    return sorted(len(s) for s in workers.streams_of(time.time_ns() - 10**9).values())


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
