"""infer.triton's choices for CUDA tensors, with a fake Triton client and fake CUDA regions.

No GPU here: `is_cuda`, the CUDA region and its device copy are faked, and so is the server
(unit tier); what is checked is the operator's logic: CUDA shared memory when it can, a server
that refuses it turns it off (auto) or degrades frames (cuda), host copies are counted, a region
the server still holds is registered afresh. tests/gpu runs the real thing on a GPU.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import operators.infer as infer_mod
import operators.triton_shm as shm_mod
from engine.errors import InferenceUnavailable
from engine.frame import Frame
from engine.metrics import NodeMetrics
from engine.registry import OperatorContext
from operators.infer import TritonConfig, TritonInfer


class FakeCudaRegion:
    kind = "cuda"

    def __init__(self, name: str, size: int, device_id: int) -> None:
        self.name, self.size, self.device_id = name, size, device_id
        self.registered = False
        self.destroyed = False

    def write(self, tensor: Any) -> None:
        raise AssertionError("the test replaces _write_cuda")

    async def register(self, client: Any, timeout_s: float) -> None:
        await client.register_cuda_shared_memory(self.name, b"handle", self.device_id, self.size)

    async def unregister(self, client: Any, timeout_s: float) -> None:
        await client.unregister_cuda_shared_memory(self.name, client_timeout=timeout_s)

    def destroy(self) -> None:
        self.destroyed = True


class FakeResult:
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def as_numpy(self, name: str) -> np.ndarray:
        return np.full((self.batch, 2), float(self.batch), np.float32)


class FakeClient:
    """Records what the operator asks of the server; refuses CUDA regions when told to."""

    def __init__(self, refuse_cuda: bool = False, holds: set[str] | None = None) -> None:
        self.refuse_cuda = refuse_cuda
        self.holds = holds or set()  # region names the server still holds (e.g. after a timeout)
        self.calls: list[tuple[str, str]] = []
        self.inputs: list[Any] = []

    async def register_cuda_shared_memory(self, name: str, raw: bytes, device_id: int, size: int) -> None:
        self.calls.append(("register_cuda", name))
        if self.refuse_cuda:
            raise InferenceServerException("failed to register CUDA shared memory region: no GPU")
        if name in self.holds:
            raise InferenceServerException(f"shared memory region '{name}' already in manager")
        self.holds.add(name)

    async def unregister_cuda_shared_memory(self, name: str, **kw: Any) -> None:
        self.calls.append(("unregister_cuda", name))
        self.holds.discard(name)

    async def register_system_shared_memory(self, name: str, key: str, size: int, **kw: Any) -> None:
        self.calls.append(("register_system", name))
        self.holds.add(name)

    async def unregister_system_shared_memory(self, name: str, **kw: Any) -> None:
        self.calls.append(("unregister_system", name))
        self.holds.discard(name)

    async def is_server_live(self, **kw: Any) -> bool:
        return True

    async def infer(self, model: str, inputs: list[Any], **kw: Any) -> FakeResult:
        self.inputs.append(inputs[0])
        params = inputs[0]._get_tensor().parameters
        if "shared_memory_region" in params:
            region = params["shared_memory_region"].string_param
            if region not in self.holds:
                raise InferenceServerException(f"Unable to find shared memory region: '{region}'")
        return FakeResult(int(inputs[0].shape()[0]))

    async def close(self) -> None:
        pass


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """numpy tensors pass for CUDA tensors; the device copy is recorded, not made."""
    copies: list[int] = []
    monkeypatch.setattr(infer_mod, "is_cuda", lambda t: True)
    monkeypatch.setattr(infer_mod, "cuda_shm_reason", lambda: None)
    monkeypatch.setattr(shm_mod, "CudaRegion", FakeCudaRegion)
    monkeypatch.setattr(infer_mod, "_write_cuda", lambda region, tensors: copies.append(len(tensors)))
    return copies


def operator(mode: str, client: FakeClient, local: bool = True) -> TritonInfer:
    url = "127.0.0.1:8001" if local else "triton:8001"
    cfg = TritonConfig(url=url, model="m", shared_memory=mode, timeout_s=0.5)
    op = TritonInfer(cfg, OperatorContext("detect", NodeMetrics("detect")))
    op.client, op.input_name, op.output_names, op.max_batch = client, "x", ["y"], 4
    op.pool = shm_mod.SlotPool("detect", cfg.timeout_s) if mode != "off" else None
    op.cuda_shm = {"cuda": True, "off": False, "system": False}.get(mode)
    return op


def frames(n: int) -> list[Frame]:
    out = []
    for i in range(n):
        f = Frame("cam0", i, i, 0, np.zeros((4, 4, 3), np.uint8))
        f.tensor = np.full((3, 8, 8), i, np.float32)
        out.append(f)
    return out


async def test_cuda_tensors_go_through_cuda_shared_memory(fake_gpu: list[int]) -> None:
    client = FakeClient()
    op = operator("auto", client)
    await op.process_batch(frames(3))
    await op.process_batch(frames(3))
    assert fake_gpu == [3, 3]  # device copies, no host copy
    events = op.ctx.metrics.events
    assert events["cuda_shm_batches"] == 2
    assert "cuda_host_copies" not in events
    assert [c for c in client.calls if c[0] == "register_cuda"] == [client.calls[0]]  # registered once
    await op.pool.close(client)  # type: ignore[union-attr]


async def test_a_server_that_refuses_cuda_regions_turns_them_off_in_auto(fake_gpu: list[int]) -> None:
    client = FakeClient(refuse_cuda=True)
    op = operator("auto", client)
    batch = frames(2)
    await op.process_batch(batch)
    await op.process_batch(frames(2))
    events = op.ctx.metrics.events
    assert events["cuda_shm_refused"] == 1
    assert events["cuda_host_copies"] == 4  # both batches went through host memory
    assert "degraded_frames" not in events
    assert op.cuda_shm is False
    assert sum(c[0] == "register_cuda" for c in client.calls) == 1  # not asked again
    assert all(f.outputs is not None for f in batch)
    await op.pool.close(client)  # type: ignore[union-attr]


async def test_a_server_that_refuses_cuda_regions_degrades_frames_in_cuda_mode(fake_gpu: list[int]) -> None:
    client = FakeClient(refuse_cuda=True)
    op = operator("cuda", client)
    batch = frames(2)
    await op.process_batch(batch)
    assert op.ctx.metrics.events["degraded_frames"] == 2
    assert all(f.outputs is None and "inference_unavailable" in f.degraded for f in batch)
    await op.pool.close(client)  # type: ignore[union-attr]


async def test_a_cuda_region_the_server_still_holds_is_registered_afresh(fake_gpu: list[int]) -> None:
    client = FakeClient()
    op = operator("auto", client)
    await op.process_batch(frames(1))
    op.pool.forget_registrations()  # type: ignore[union-attr]  # e.g. after timeouts while it was slow
    batch = frames(1)
    await op.process_batch(batch)
    cuda_calls = [c for c in client.calls if c[0].endswith("_cuda")]
    name = cuda_calls[0][1]
    assert cuda_calls == [
        ("register_cuda", name),
        ("register_cuda", name),
        ("unregister_cuda", name),
        ("register_cuda", name),
    ]
    assert batch[0].outputs is not None
    assert "degraded_frames" not in op.ctx.metrics.events
    await op.pool.close(client)  # type: ignore[union-attr]


@pytest.mark.parametrize(("mode", "local"), [("off", True), ("system", True), ("auto", False)])
async def test_cuda_tensors_are_copied_to_the_host_without_cuda_shared_memory(
    fake_gpu: list[int], mode: str, local: bool
) -> None:
    client = FakeClient()
    op = operator(mode, client, local)
    if not local:
        op.pool, op.cuda_shm = None, False  # what setup decides for a remote server
    batch = frames(3)
    await op.process_batch(batch)
    assert fake_gpu == []
    assert not any(c[0] == "register_cuda" for c in client.calls)
    assert all(f.outputs is not None for f in batch)
    if op.pool is not None:
        assert op.ctx.metrics.events["cuda_host_copies"] == 3
        await op.pool.close(client)


class ForgetfulServer(FakeClient):
    """A server that restarted between two requests: it no longer knows the regions."""

    def __init__(self) -> None:
        super().__init__()
        self.restarted = False

    async def infer(self, model: str, inputs: list[Any], **kw: Any) -> FakeResult:
        if self.restarted:
            self.restarted = False
            self.holds.clear()
        return await super().infer(model, inputs, **kw)


async def test_a_restart_between_requests_costs_a_retry_not_degraded_frames() -> None:
    client = ForgetfulServer()
    op = operator("system", client)
    await op.process_batch(frames(2))
    client.restarted = True
    batch = frames(2)
    await op.process_batch(batch)
    assert all(f.outputs is not None for f in batch)
    events = op.ctx.metrics.events
    assert events["retries"] == 1
    assert "degraded_frames" not in events
    # registered, re-made larger once the outputs' shapes were known, registered again for the retry
    assert [c[0] for c in client.calls] == [
        "register_system",
        "unregister_system",
        "register_system",
        "register_system",
    ]
    await op.pool.close(client)  # type: ignore[union-attr]


class StoppingServer(FakeClient):
    """A server shutting down: it still holds the regions and never answers an unregister."""

    async def register_system_shared_memory(self, name: str, key: str, size: int, **kw: Any) -> None:
        self.calls.append(("register_system", name))
        raise InferenceServerException(f"shared memory region '{name}' already in manager")

    async def unregister_system_shared_memory(self, name: str, **kw: Any) -> None:
        self.calls.append(("unregister_system", name))
        if kw.get("client_timeout") is None:
            await asyncio.Event().wait()  # an unbounded call hangs the node for good
        await asyncio.sleep(kw["client_timeout"])
        raise InferenceServerException("Deadline Exceeded")


async def test_a_server_that_never_answers_an_unregister_cannot_hang_the_node() -> None:
    client = StoppingServer()
    op = operator("system", client)
    batch = frames(2)
    await asyncio.wait_for(op.process_batch(batch), 5)  # bounded by timeout_s (0.5 s) per call
    assert all("inference_unavailable" in f.degraded for f in batch)
    assert ("unregister_system", client.calls[0][1]) in client.calls
    for slot in op.pool.slots:  # type: ignore[union-attr]
        for region in slot.regions():
            region.destroy()  # freed here: this server would not answer an unregister


class FakeCudaShmError(Exception):
    """Stands in for tritonclient's CudaSharedMemoryException (cudaMalloc, the device copy)."""


async def test_a_failed_cuda_copy_degrades_the_batch_instead_of_dropping_it(
    fake_gpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_copy(region: Any, tensors: list[Any]) -> None:
        raise FakeCudaShmError("cudaMemcpyAsync failed: invalid resource handle")

    monkeypatch.setattr(infer_mod, "cuda_shm_errors", lambda: (FakeCudaShmError,))
    monkeypatch.setattr(infer_mod, "_write_cuda", failing_copy)
    client = FakeClient()
    op = operator("cuda", client)
    batch = frames(2)
    out = await op.process_batch(batch)
    assert len(out) == 2  # handed on (degraded: redaction covers them whole), not dropped
    assert op.ctx.metrics.events["degraded_frames"] == 2
    assert all(f.outputs is None and "inference_unavailable" in f.degraded for f in batch)
    await op.pool.close(client)  # type: ignore[union-attr]


def test_cuda_region_writes_never_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """tritonclient makes its copy stream on first use without a lock: writes go one at a time."""
    import sys
    import threading
    import time
    import types

    active, most = [0], [0]
    guard = threading.Lock()

    def copy(handle: Any, tensors: list[Any]) -> None:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        with guard:
            active[0] -= 1

    fake = types.ModuleType("tritonclient.utils.cuda_shared_memory")
    fake.create_shared_memory_region = lambda name, size, device_id: object()  # type: ignore[attr-defined]
    fake.set_shared_memory_region_from_dlpack = copy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tritonclient.utils.cuda_shared_memory", fake)
    regions = [shm_mod.CudaRegion(f"r{i}", 64, 0) for i in range(4)]
    threads = [threading.Thread(target=r.write, args=(np.zeros(4),)) for r in regions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


class HungClient(FakeClient):
    async def infer(self, model: str, inputs: list[Any], **kw: Any) -> FakeResult:
        raise InferenceServerException("Deadline Exceeded")


async def test_a_hung_server_is_named_with_its_address_and_the_timeout() -> None:
    """gRPC says only 'Deadline Exceeded': the operator must say which server and how long."""
    op = operator("off", HungClient())
    op.url = "admin:pw@triton:8001"
    with pytest.raises(InferenceUnavailable) as info:
        await op._request([f.tensor for f in frames(2)])
    assert str(info.value) == (
        "m: no answer from Triton at ***@triton:8001 within timeout_s 0.5 s (Deadline Exceeded)"
    )
