"""Workers sharing streams through a real Redis: even spread, failover after kill -9, Redis restart."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import ROOT, free_port

TTL_S = 3.0
GRAPH = """\
name: workers
sources:
  - {id: s0, url: synthetic, op: test.synthetic, config: {frames: 10000000, fps: 15}}
nodes:
  - {id: events, op: sink.jsonl, inputs: [sources], config: {path: events.jsonl, flush_interval_s: 0.1}}
"""


def synthetic_stream(sid: str, frames: int = 10**7) -> dict[str, object]:
    """The body of POST /streams for a synthetic 15 fps camera (engine.testing's test.synthetic)."""
    return {"id": sid, "url": "synthetic", "op": "test.synthetic", "config": {"frames": frames, "fps": 15}}


class RedisServer:
    """A private redis-server (nothing on disk) that a test may restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


class Workers:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.graph = tmp / "graph.yaml"
        self.graph.write_text(GRAPH)
        self.redis_url = redis_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, wid: str, *extra: str) -> None:
        self.ports[wid] = port = free_port()
        self.procs[wid] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "worker",
                str(self.graph),
                "--redis",
                self.redis_url,
                "--namespace",
                "t",
                "--worker-id",
                wid,
                "--lease-ttl-s",
                str(TTL_S),
                "--api-port",
                str(port),
                "--output",
                str(self.tmp / wid),
                "--plugin",
                "engine.testing",
                "--log-level",
                "WARNING",
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def records(self) -> list[tuple[int, str, str]]:
        """(capture_ns, stream, worker) of every frame every worker wrote."""
        out = []
        for wid in self.procs:
            path = self.tmp / wid / "events.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.endswith("}"):
                        r = json.loads(line)
                        out.append((r["capture_ns"], r["stream_id"], wid))
        return sorted(out)

    def streams_of(self, since_ns: int) -> dict[str, set[str]]:
        by_worker: dict[str, set[str]] = {}
        for t, sid, wid in self.records():
            if t > since_ns:
                by_worker.setdefault(wid, set()).add(sid)
        return by_worker

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(predicate: object, timeout_s: float) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(0.2)
    return time.monotonic() - started


def segments(records: list[tuple[int, str, str]], stream: str) -> list[str]:
    """The workers that processed `stream`, run by run, in capture order."""
    runs: list[str] = []
    for _, sid, wid in records:
        if sid == stream and (not runs or runs[-1] != wid):
            runs.append(wid)
    return runs


def test_three_workers_share_nine_streams_and_survive_a_kill(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    workers = Workers(tmp_path, redis_server.url)
    try:
        for wid in ("w1", "w2", "w3"):
            workers.start(wid)
        api = f"http://127.0.0.1:{workers.ports['w1']}"
        wait_until(
            lambda: httpx.get(f"{api}/readyz", timeout=1).status_code == 200 if _up(api) else False, 30
        )
        for i in range(1, 9):
            body = synthetic_stream(f"s{i}")
            assert httpx.post(f"{api}/streams", json=body, timeout=5).status_code == 201
        t0 = time.time_ns()
        wait_until(
            lambda: (
                sorted(len(s) for s in workers.streams_of(time.time_ns() - 1_000_000_000).values())
                == [3, 3, 3]
            ),
            30,
        )
        victim = workers.streams_of(time.time_ns() - 1_000_000_000)["w1"]
        workers.procs["w1"].send_signal(signal.SIGKILL)
        killed_ns = time.time_ns()
        failover_s = wait_until(
            lambda: (
                victim <= set().union(*(s for w, s in workers.streams_of(killed_ns).items() if w != "w1"))
            ),
            TTL_S + 5,
        )
        time.sleep(1)
        records = workers.records()
        for sid in [f"s{i}" for i in range(9)]:
            runs = segments([r for r in records if r[0] > t0], sid)
            assert len(runs) <= 3, (sid, runs)  # never two workers at once (that would alternate)
        for sid in victim:
            assert segments([r for r in records if r[0] > t0], sid)[-1] != "w1"
        print(f"failover {failover_s:.2f} s")
    finally:
        workers.stop()


def _up(api: str) -> bool:
    try:
        httpx.get(f"{api}/healthz", timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


def test_redis_restart_workers_keep_their_streams_and_re_register(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    workers = Workers(tmp_path, redis_server.url)
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        for i in range(1, 4):
            client.hset(
                "fg:t:streams",
                f"s{i}",
                json.dumps(synthetic_stream(f"s{i}")),
            )
        workers.start("w1")
        workers.start("w2")
        wait_until(
            lambda: (
                sorted(len(s) for s in workers.streams_of(time.time_ns() - 1_000_000_000).values()) == [2, 2]
            ),
            30,
        )
        time.sleep(1)
        before = workers.streams_of(time.time_ns() - 1_000_000_000)
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()  # empty: the registry and the leases are gone
        restarted_ns = time.time_ns()
        wait_until(lambda: len(client.hgetall("fg:t:streams")) == 4, 10)  # re-registered
        time.sleep(2 * TTL_S)
        after = workers.streams_of(restarted_ns + int(TTL_S * 1e9))
        assert after == before  # everyone kept their streams
        records = workers.records()
        for sid in ["s0", "s1", "s2", "s3"]:
            times = [t for t, s, _ in records if s == sid and t > restarted_ns - 3_000_000_000]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) < 1_000_000_000, sid  # processing never paused
        assert set(client.keys("fg:t:lease:*")) == {f"fg:t:lease:s{i}" for i in range(4)}
    finally:
        client.close()
        workers.stop()


def two_free_ports() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def start_worker_processes(
    tmp_path: Path, redis_url: str, namespace: str
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """`framegraph worker --processes 2` (ids w-0, w-1); the parent and the two APIs once up.
    Its stderr goes to tmp_path/workers.log."""
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    port = two_free_ports()
    cmd = [sys.executable, "-m", "engine.cli", "worker", str(graph), "--redis", redis_url]
    cmd += [
        "--namespace",
        namespace,
        "--worker-id",
        "w",
        "--lease-ttl-s",
        str(TTL_S),
        "--api-port",
        str(port),
    ]
    cmd += ["--output", str(tmp_path / "out"), "--plugin", "engine.testing", "--processes", "2"]
    with (tmp_path / "workers.log").open("w") as log_file:
        parent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
    apis = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        wait_until(lambda: all(_up(a) for a in apis), 60)
    except AssertionError:
        parent.kill()
        raise
    return parent, apis


def test_one_worker_command_runs_k_processes_that_share_the_streams(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`framegraph worker --processes 2`: two workers (ids w-0, w-1, APIs on P and P+1) lease the
    streams added through either API; SIGTERM to the parent stops both and exits 0."""
    parent, apis = start_worker_processes(tmp_path, redis_server.url, "k")
    try:
        for i in range(1, 6):
            body = synthetic_stream(f"s{i}")
            assert httpx.post(f"{apis[i % 2]}/streams", json=body, timeout=5).status_code == 201

        def owners() -> list[str | None]:
            return [s["owner"] for s in httpx.get(f"{apis[0]}/streams", timeout=5).json()]

        wait_until(lambda: sorted(map(str, owners())) == ["w-0"] * 3 + ["w-1"] * 3, 30)  # s0 (static) + 5

        def seen_from(api: str) -> dict[str, dict[str, object]]:
            return {s["id"]: s for s in httpx.get(f"{api}/streams", timeout=5).json()}

        # each API shows all six streams running, with their figures, whichever process runs them
        for api in apis:
            wait_until(
                lambda api=api: all(
                    s["state"] == "running" and int(s["frames_in"]) > 0 for s in seen_from(api).values()
                ),
                10,
            )
        assert {s["owner"] for s in seen_from(apis[0]).values()} == {"w-0", "w-1"}
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            code = parent.wait(30)
        except subprocess.TimeoutExpired:
            parent.kill()
            raise
    assert code == 0, (tmp_path / "workers.log").read_text()[-3000:]
    assert not any(_up(a) for a in apis)  # both processes are gone


def test_worker_processes_need_a_shared_registry(tmp_path: Path) -> None:
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    cmd = [sys.executable, "-m", "engine.cli", "worker", str(graph), "--plugin", "engine.testing"]
    done = subprocess.run(
        [*cmd, "--processes", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FG_REDIS_URL"},
    )
    assert done.returncode != 0
    assert "--processes needs --redis" in done.stderr


def test_when_one_worker_process_dies_the_command_stops_the_rest_and_exits_1(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    parent, apis = start_worker_processes(tmp_path, redis_server.url, "d")
    try:
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, children
        os.kill(int(workers[0]), signal.SIGKILL)
        code = parent.wait(30)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert code == 1
    assert "exited with code -9; stopping the others" in (tmp_path / "workers.log").read_text()
    assert not any(_up(a) for a in apis)  # the survivor was stopped too


def test_a_removed_graph_source_stays_removed_and_a_failed_stream_gives_its_lease_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`streams rm` of a graph's own source survives a worker restart (until the graph file edits
    it); a stream whose source fails is handed back (no lease), and every API shows it failed."""
    workers = Workers(tmp_path, redis_server.url)
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        workers.start("w1", "--failed-retry-s", "30")
        workers.start("w2", "--failed-retry-s", "30")
        apis = [f"http://127.0.0.1:{workers.ports[w]}" for w in ("w1", "w2")]
        wait_until(lambda: all(_up(a) for a in apis), 30)
        wait_until(lambda: client.exists("fg:t:lease:s0") == 1, 30)
        bad = {"id": "bad", "url": str(tmp_path / "nope.mp4")}
        assert httpx.post(f"{apis[0]}/streams", json=bad, timeout=5).status_code == 201

        def shown(api: str, sid: str) -> dict[str, object]:
            got: dict[str, object] = httpx.get(f"{api}/streams/{sid}", timeout=5).json()
            return got

        for api in apis:
            wait_until(lambda api=api: shown(api, "bad")["state"] == "failed", 20)
        failed = shown(apis[1], "bad")
        assert failed["error"] == f"bad: cannot open {tmp_path / 'nope.mp4'}: No such file or directory"
        assert 0 < float(str(failed["retry_in_s"])) <= 30
        assert client.exists("fg:t:lease:bad") == 0  # nobody holds it while it is held back

        assert httpx.delete(f"{apis[0]}/streams/s0", timeout=5).status_code == 204
        workers.stop()
        workers.procs.clear()
        workers.start("w3")
        api = f"http://127.0.0.1:{workers.ports['w3']}"
        wait_until(lambda: _up(api) and httpx.get(f"{api}/readyz", timeout=1).status_code == 200, 30)
        time.sleep(2 * TTL_S / 5 + 0.5)  # a few ticks
        assert "s0" not in client.hgetall("fg:t:streams")  # the restart did not bring it back
        assert "s0" not in {s["id"] for s in httpx.get(f"{api}/streams", timeout=5).json()}
        workers.stop()
        workers.procs.clear()
        workers.graph.write_text(GRAPH.replace("fps: 15", "fps: 10"))  # the graph file changes s0
        workers.start("w4")
        wait_until(lambda: "s0" in client.hgetall("fg:t:streams"), 30)
        assert json.loads(client.hget("fg:t:streams", "s0") or "{}")["config"]["fps"] == 10
    finally:
        client.close()
        workers.stop()
