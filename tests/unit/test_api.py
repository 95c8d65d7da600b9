"""The control API of a worker: auth, validation, add/remove streams at run time, masked URLs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engine.api import create_app
from engine.runtime import RunOptions
from engine.store import MemoryStore
from engine.testing import CollectOperator, plan_from_yaml
from engine.worker import Worker

GRAPH = """\
name: api_test
sources:
  - {id: seed, url: synthetic, op: test.synthetic, config: {frames: 100000, fps: 50}}
nodes:
  - {id: out, op: test.collect, inputs: [sources], queue: {size: 64, policy: drop_oldest}}
"""
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Worker]]:
    worker = Worker(
        plan_from_yaml(GRAPH), RunOptions(output_dir=tmp_path), MemoryStore(), "w1", lease_ttl_s=1.0
    )
    task = asyncio.create_task(worker.run())
    transport = httpx.ASGITransport(app=create_app(worker, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for _ in range(100):
            if worker.ready:
                break
            await asyncio.sleep(0.02)
        yield client, worker
    worker.stop()
    await asyncio.wait_for(task, 10)


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_mutations_need_the_right_token(api: tuple[httpx.AsyncClient, Worker]) -> None:
    client, _ = api
    body = {"id": "cam1", "url": "synthetic", "op": "test.synthetic"}
    assert (await client.post("/streams", json=body)).status_code == 401
    wrong = await client.post("/streams", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (await client.delete("/streams/seed")).status_code == 401
    assert (await client.get("/streams")).status_code == 200  # reads are open by default


async def test_added_stream_is_processed_and_removed_stream_released(
    api: tuple[httpx.AsyncClient, Worker],
) -> None:
    client, worker = api
    body = {"id": "cam1", "url": "synthetic", "op": "test.synthetic", "config": {"frames": 100000, "fps": 50}}
    created = await client.post("/streams", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    out: CollectOperator = worker.runtime.operator("out")  # type: ignore[assignment]
    await wait_for(lambda: sum(i.stream_id == "cam1" for i in out.items) > 10)
    status = (await client.get("/streams/cam1")).json()
    assert status["state"] == "running"
    assert status["frames_out"] > 10
    assert status["owner"] == "w1"
    assert (await client.post("/streams", json=body, headers=AUTH)).status_code == 409
    assert (await client.delete("/streams/cam1", headers=AUTH)).status_code == 204
    await wait_for(lambda: ("end", "cam1") in out.calls)  # per-stream state released downstream
    assert (await client.get("/streams/cam1")).status_code == 404
    assert "cam1" not in worker.runtime.streams
    assert [s["id"] for s in (await client.get("/streams")).json()] == ["seed"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"id": "c", "url": "x", "op": "test.synthetic", "config": {"fps": -1}}, ["body", "config", "fps"]),
        (
            {"id": "c", "url": "x", "op": "test.synthetic", "config": {"colour": 1}},
            ["body", "config", "colour"],
        ),
        ({"id": "c", "url": "x", "op": "decode.pyav"}, ["body", "op"]),
        ({"id": "c", "url": "x", "colour": "red"}, ["body", "colour"]),
        ({"id": "bad id", "url": "x"}, ["body", "id"]),
        ({"url": "x"}, ["body", "id"]),
    ],
)
async def test_bad_bodies_get_422_naming_the_field(
    api: tuple[httpx.AsyncClient, Worker], body: dict[str, object], loc: list[str]
) -> None:
    client, _ = api
    response = await client.post("/streams", json=body, headers=AUTH)
    assert response.status_code == 422
    assert loc in [d["loc"] for d in response.json()["detail"]]


async def test_urls_are_masked_in_every_response(api: tuple[httpx.AsyncClient, Worker]) -> None:
    client, _ = api
    body = {"id": "cam2", "url": "rtsp://admin:hunter2@10.0.0.9/live", "op": "test.synthetic"}
    created = await client.post("/streams", json=body, headers=AUTH)
    assert created.status_code == 201
    for response in (created, await client.get("/streams"), await client.get("/streams/cam2")):
        assert "hunter2" not in response.text
        assert "rtsp://***@10.0.0.9/live" in response.text


async def test_health_ready_and_metrics(api: tuple[httpx.AsyncClient, Worker]) -> None:
    client, _ = api
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'framegraph_streams_active{worker="w1"} 1.0' in metrics
    assert "framegraph_frames_in_total" in metrics
    assert 'framegraph_stream_up{graph="api_test",stream="seed"} 1.0' in metrics  # alert on 0
    assert 'framegraph_stream_state{graph="api_test",state="running",stream="seed"} 1.0' in metrics
    assert 'framegraph_stream_state{graph="api_test",state="failed",stream="seed"} 0.0' in metrics
    assert "/streams" in (await client.get("/openapi.json")).json()["paths"]
