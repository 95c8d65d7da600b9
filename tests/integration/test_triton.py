"""infer.triton against a real Triton server: model checks, shared memory, outages, embedded server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from engine.errors import OperatorError
from engine.runtime import RunOptions, Runtime
from engine.testing import CollectOperator, plan_from_yaml, run_graph
from operators.triton_local import LocalTriton
from tests.integration.conftest import TritonInstance


def detect_graph(
    url: str, clip: Path, *, model: str = "centerface", pre: str = "", infer: str = "", source: str = ""
) -> str:
    return f"""\
name: detect_test
sources:
  - {{id: cam0, url: "{clip}"{source}}}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: pre, op: preprocess.cpu, inputs: [decode], config: {{width: 640, height: 384{pre}}}}}
  - {{id: detect, op: infer.triton, inputs: [pre], batch: {{max_batch: 4, max_delay_ms: 5}},
     config: {{url: "{url}", model: {model}{infer}}}}}
  - {{id: out, op: test.collect, inputs: [detect], queue: {{size: 512}}}}
"""


async def test_missing_model_is_a_clear_error_before_frames_flow(triton_url: str, clip_720p: Path) -> None:
    with pytest.raises(OperatorError) as info:
        await run_graph(detect_graph(triton_url, clip_720p, model="facez"))
    message = str(info.value)
    assert "model 'facez' (version latest) is not available" in message
    assert "models there: centerface, centerface_torch, textdet" in message


@pytest.mark.parametrize(
    ("pre", "expected"),
    [
        (", layout: hwc", "takes FP32 [3, -1, -1], but the preprocess feeding it makes FP32 [384, 640, 3]"),
        (", dtype: uint8", "takes FP32 [3, -1, -1], but the preprocess feeding it makes UINT8 [3, 384, 640]"),
    ],
)
async def test_wrong_input_shape_or_dtype_fails_setup(
    triton_url: str, clip_720p: Path, pre: str, expected: str
) -> None:
    with pytest.raises(
        OperatorError, match=r"input 'input.1' " + expected.replace("[", r"\[").replace("]", r"\]")
    ):
        await run_graph(detect_graph(triton_url, clip_720p, pre=pre))


async def test_unknown_output_name_fails_setup(triton_url: str, clip_720p: Path) -> None:
    with pytest.raises(OperatorError, match=r"has no outputs \['heatmap'\]"):
        await run_graph(detect_graph(triton_url, clip_720p, infer=", outputs: [heatmap]"))


async def test_outputs_equal_with_and_without_shared_memory(triton_url: str, clip_720p: Path) -> None:
    results = {}
    for mode in ("system", "off"):
        runtime, summary = await run_graph(
            detect_graph(triton_url, clip_720p, infer=f", shared_memory: {mode}"), max_frames=6
        )
        out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
        assert len(out.items) == 6
        results[mode] = [f.outputs for f in out.items]  # type: ignore[union-attr]
        events = summary["nodes"]["detect"].get("events", {})
        assert events.get("degraded_frames", 0) == 0
        # with shared memory, outputs come back through it once the first reply taught their shapes
        assert (events.get("output_shm_batches", 0) >= 1) == (mode == "system")
    for a, b in zip(results["system"], results["off"], strict=True):
        assert a is not None
        assert b is not None
        assert set(a) == {"537", "538", "539", "540"}
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


async def test_regions_the_server_still_holds_are_registered_afresh(triton_url: str, clip_720p: Path) -> None:
    """A client that lost track of its registrations (a timeout while the server was only slow)
    must not degrade frames because the server answers "already in manager"."""
    graph = detect_graph(
        triton_url,
        clip_720p,
        source=", config: {loop: true, realtime: true}",
        infer=", shared_memory: system",
    )
    runtime = Runtime(plan_from_yaml(graph), RunOptions(max_frames=45))
    task = asyncio.create_task(runtime.run())
    op = None
    while op is None or not op.layouts:  # waits for the first served batches
        await asyncio.sleep(0.1)
        op = getattr(runtime, "_nodes", {}).get("detect")
        op = op.op if op is not None else None
        assert not task.done()
    op.pool.forget_registrations()  # the server still holds every region under its name
    summary = await asyncio.wait_for(task, 60)
    events = summary["nodes"]["detect"]["events"]
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    assert len(out.items) == 45
    assert events.get("degraded_frames", 0) == 0
    assert all(f.outputs is not None for f in out.items)  # type: ignore[union-attr]
    assert out.items[-1].outputs is not None  # type: ignore[union-attr]


async def test_triton_killed_mid_run_degrades_frames_then_recovers(
    private_triton: TritonInstance, clip_720p: Path
) -> None:
    graph = detect_graph(
        private_triton.url,
        clip_720p,
        source=", config: {loop: true, realtime: true}",
        infer=", timeout_s: 1.0, retries: 1, probe_interval_s: 0.5",
    ).replace("max_batch: 4", "max_batch: 2")
    runtime = Runtime(plan_from_yaml(graph), RunOptions(max_frames=390))
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(2.5)
    await asyncio.to_thread(private_triton, "kill")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(private_triton, "start")
    summary = await asyncio.wait_for(task, 60)
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    events = summary["nodes"]["detect"]["events"]
    degraded = [f for f in out.items if "inference_unavailable" in f.degraded]  # type: ignore[union-attr]
    served = [f for f in out.items if f.outputs is not None]  # type: ignore[union-attr]
    assert len(out.items) == summary["streams"]["cam0"]["frames_in"] == 390  # nothing lost
    assert len(degraded) + len(served) == 390  # every frame either served or marked degraded
    assert len(degraded) == events["degraded_frames"] > 20
    assert events["recoveries"] >= 1
    assert all(f.outputs is None for f in degraded)  # type: ignore[union-attr]
    assert out.items[-1].outputs is not None  # type: ignore[union-attr]  # served again at the end


async def test_no_url_starts_a_local_triton_for_the_run_and_stops_it(clip_720p: Path) -> None:
    runtime = Runtime(plan_from_yaml(detect_graph("", clip_720p)), RunOptions(max_frames=4))
    task = asyncio.create_task(runtime.run())
    while LocalTriton._url is None and not task.done():  # noqa: ASYNC110 (polls a class attribute)
        await asyncio.sleep(0.05)
    url = LocalTriton._url
    await asyncio.wait_for(task, 180)
    out: CollectOperator = runtime.operator("out")  # type: ignore[assignment]
    assert len(out.items) == 4
    assert all(f.outputs is not None for f in out.items)  # type: ignore[union-attr]
    assert url is not None
    assert url != "127.0.0.1:8001"  # not the shared server: one of its own
    host, port = url.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=1):
        pass  # stopped with the run
