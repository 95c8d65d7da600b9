"""Stream status in summaries and in the control API: failed sources, reconnects, failing nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from engine.api import create_app
from engine.cli import EXIT_FAILED, EXIT_STREAMS_FAILED, run_exit_code
from engine.frame import Control, ControlKind, Frame, StreamInfo, now_ns
from engine.metrics import StreamState, failed_streams, failing_nodes
from engine.registry import Emit, Source, register
from engine.runtime import RunOptions, Runtime
from engine.store import MemoryStore
from engine.testing import plan_from_yaml, run_graph
from engine.worker import Worker

COLLECT = "  - {id: out, op: test.collect, inputs: [sources]}"


def graph(sources: str, nodes: str = COLLECT) -> str:
    return f"name: t\nsources:\n{sources}\nnodes:\n{nodes}\n"


@register("test.raising")
class RaisingSource(Source[Any]):
    """Raises at once, with a password-bearing URL in its message (must be scrubbed)."""

    runs = 0

    async def run(self, emit: Emit) -> None:
        RaisingSource.runs += 1
        raise RuntimeError("cannot reach rtsp://admin:hunter2@10.0.0.1/live")


@register("test.flaky")
class FlakySource(Source[Any]):
    """Reports a lost connection, waits until let go (`release`), then sends frames until stopped."""

    release: asyncio.Event | None = None

    async def run(self, emit: Emit) -> None:
        sid = self.ctx.stream_id
        self.ctx.metrics.source_retrying(f"{sid}: rtsp://***@cam/x disconnected")
        assert FlakySource.release is not None
        await FlakySource.release.wait()
        await emit(Control(ControlKind.START, sid, StreamInfo(sid, width=8, height=8)))
        seq = 0
        while not self.ctx.stop.is_set():
            await emit(Frame(sid, seq, seq, now_ns(), __import__("numpy").zeros((8, 8, 3), "uint8")))
            seq += 1
            await asyncio.sleep(0.01)
        await emit(Control(ControlKind.END, sid))


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_missing_file_fails_its_stream_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    sources = f"  - {{id: cam0, url: '{missing}'}}\n  - {{id: s1, url: x, op: test.synthetic}}"
    _, summary = await run_graph(graph(sources))
    cam0, s1 = summary["streams"]["cam0"], summary["streams"]["s1"]
    assert cam0["status"] == "failed"
    assert cam0["error"] == f"cam0: cannot open {missing}: No such file or directory"
    assert s1["status"] == "ok"  # a source that came to its end
    assert "error" not in s1
    assert failed_streams(summary) == {"cam0": cam0["error"]}
    assert run_exit_code(summary, []) == EXIT_STREAMS_FAILED


async def test_a_source_that_raises_fails_with_a_scrubbed_error() -> None:
    _, summary = await run_graph(graph("  - {id: cam0, url: x, op: test.raising}"))
    assert summary["streams"]["cam0"]["status"] == "failed"
    assert "hunter2" not in summary["streams"]["cam0"]["error"]
    assert "rtsp://***@10.0.0.1/live" in summary["streams"]["cam0"]["error"]


async def test_an_rtsp_source_out_of_reconnects_fails_and_reconnecting_shows_why() -> None:
    rtsp = "url: 'rtsp://u:pw@127.0.0.1:9/x', config: {open_timeout_s: 1, backoff_initial_s: 0.05"
    _, summary = await run_graph(graph(f"  - {{id: cam0, {rtsp}, max_reconnects: 1}}}}"))
    error = summary["streams"]["cam0"]["error"]
    assert summary["streams"]["cam0"]["status"] == "failed"
    assert error.startswith("cam0: gave up after 1 reconnects (last: cannot open rtsp://***@127.0.0.1:9/x")
    runtime = Runtime(plan_from_yaml(graph(f"  - {{id: cam0, {rtsp}}}}}")), RunOptions())
    task = asyncio.create_task(runtime.run())
    await wait_for(lambda: runtime.metrics.stream("cam0").state is StreamState.RECONNECTING)
    assert "cannot open rtsp://***@127.0.0.1:9/x" in (runtime.metrics.stream("cam0").error or "")
    runtime.stop()
    summary = await asyncio.wait_for(task, 10)
    assert summary["streams"]["cam0"]["status"] == "stopped"  # stopped on request: not a failure
    assert run_exit_code(summary, []) == 0


async def test_a_node_that_drops_every_item_by_errors_is_failing() -> None:
    nodes = (
        "  - {id: dec, op: decode.pyav, inputs: [sources]}\n  - {id: out, op: test.collect, inputs: [dec]}"
    )
    _, summary = await run_graph(
        graph("  - {id: s0, url: x, op: test.synthetic, config: {frames: 4}}", nodes)
    )
    assert failing_nodes(summary) == {"dec": {"error:TypeError": 4}}
    assert summary["streams"]["s0"]["status"] == "ok"
    assert run_exit_code(summary, []) == EXIT_STREAMS_FAILED
    assert run_exit_code(summary, ["process 1 died"]) == EXIT_FAILED


async def test_a_healthy_run_and_an_empty_node_are_not_failures() -> None:
    nodes = f"{COLLECT}\n  - {{id: idle, op: test.collect, inputs: [out]}}"
    _, summary = await run_graph(
        graph("  - {id: s0, url: x, op: test.synthetic, config: {frames: 3}}", nodes)
    )
    assert failing_nodes(summary) == {}
    assert failed_streams(summary) == {}
    assert run_exit_code(summary, []) == 0


async def test_api_shows_failed_with_the_error_and_reconnecting_until_running(tmp_path: Path) -> None:
    plan = plan_from_yaml(graph("  - {id: seed, url: x, op: test.synthetic, config: {frames: 1}}"))
    worker = Worker(plan, RunOptions(output_dir=tmp_path), MemoryStore(), "w1", lease_ttl_s=1.0)
    task = asyncio.create_task(worker.run())
    FlakySource.release = asyncio.Event()
    transport = httpx.ASGITransport(app=create_app(worker, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await wait_for(lambda: worker.ready)
        missing = tmp_path / "nope.mp4"
        assert (await client.post("/streams", json={"id": "camx", "url": str(missing)})).status_code == 201
        assert (
            await client.post("/streams", json={"id": "f", "url": "x", "op": "test.flaky"})
        ).status_code == 201

        async def state(sid: str) -> dict[str, Any]:
            body: dict[str, Any] = (await client.get(f"/streams/{sid}")).json()
            return body

        states: dict[str, dict[str, Any]] = {}

        async def poll() -> None:
            for sid in ("camx", "f"):
                states[sid] = await state(sid)

        async def reached(sid: str, wanted: str) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                await poll()
                if states[sid]["state"] == wanted:
                    return
                assert asyncio.get_running_loop().time() < deadline, states
                await asyncio.sleep(0.05)

        await reached("camx", "failed")
        assert states["camx"]["error"] == f"camx: cannot open {missing}: No such file or directory"
        await reached("f", "reconnecting")
        assert states["f"]["error"] == "f: rtsp://***@cam/x disconnected"
        FlakySource.release.set()
        await reached("f", "running")
        assert states["f"]["error"] is None
        listed = {s["id"]: s for s in (await client.get("/streams")).json()}
        assert listed["camx"]["state"] == "failed"
        assert listed["camx"]["error"] == states["camx"]["error"]
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_a_worker_hands_a_failed_stream_back_and_tries_it_again_later(tmp_path: Path) -> None:
    """A failed stream must not keep its lease (a slot of the worker's share) for ever: it is
    released, shown failed with when it is tried again, and tried again after failed_retry_s."""
    plan = plan_from_yaml(graph("  - {id: seed, url: x, op: test.synthetic, config: {frames: 1}}"))
    store = MemoryStore()
    worker = Worker(plan, RunOptions(output_dir=tmp_path), store, "w1", lease_ttl_s=0.5, failed_retry_s=1.5)
    RaisingSource.runs = 0
    task = asyncio.create_task(worker.run())
    transport = httpx.ASGITransport(app=create_app(worker, None))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await wait_for(lambda: worker.ready)
        body = {"id": "bad", "url": "x", "op": "test.raising"}
        assert (await client.post("/streams", json=body)).status_code == 201
        await wait_for(lambda: RaisingSource.runs == 1 and "bad" not in worker.owned)
        assert "bad" not in await store.owners()  # the lease went back
        shown = (await client.get("/streams/bad")).json()
        assert shown["state"] == "failed"
        assert shown["error"] == "cannot reach rtsp://***@10.0.0.1/live"
        assert 0 < shown["retry_in_s"] <= 1.5
        await wait_for(lambda: "bad" in worker.held_failed)  # /metrics still says the camera is down
        metrics = (await client.get("/metrics")).text
        assert 'framegraph_stream_up{graph="t",stream="bad"} 0.0' in metrics
        assert 'framegraph_stream_state{graph="t",state="failed",stream="bad"} 1.0' in metrics
        await asyncio.sleep(0.6)
        assert RaisingSource.runs == 1  # held back meanwhile
        await wait_for(lambda: RaisingSource.runs == 2, timeout_s=5)  # then tried again
        # a changed spec is tried at once
        fixed = {"url": "x", "op": "test.synthetic", "config": {"frames": 100000, "fps": 50}}
        assert (await client.put("/streams/bad", json=fixed)).status_code == 200
        await wait_for(lambda: worker.stream_status("bad")["state"] == "running", timeout_s=5)
        assert (await client.get("/streams/bad")).json()["retry_in_s"] is None
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_a_relative_path_that_cannot_be_opened_says_where_it_was_looked_for() -> None:
    import os

    _, summary = await run_graph(graph("  - {id: cam0, url: surely/not/here.mp4}"))
    assert summary["streams"]["cam0"]["error"] == (
        "cam0: cannot open surely/not/here.mp4: No such file or directory "
        f"(a relative path: from the working directory {os.getcwd()})"
    )
