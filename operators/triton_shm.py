"""Shared-memory regions for `infer.triton` requests, so tensors skip gRPC's copies.

One `Slot` per request in flight. A slot's input lives in system shared memory (host tensors)
or in a CUDA shared-memory region (CUDA tensors: a device-to-device copy, no trip through the
host). Outputs land in the slot's system region once their per-item shapes are known from a
first served response (`OutputLayout`), so Triton writes results straight into memory this
process reads, instead of serialising them into the gRPC reply.

Regions are registered with the server lazily and again after a server restart; a region the
server still holds under the same name ("already in manager") is unregistered and registered
afresh, so a restart that the client noticed late costs one extra call, not an outage.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import OperatorError

log = logging.getLogger("framegraph.infer")
NP_TO_TRITON = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int64": "INT64", "int32": "INT32"}
TRITON_TO_NP = {v: k for k, v in NP_TO_TRITON.items()}
_ALIGN_BYTES = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN_BYTES - 1) // _ALIGN_BYTES * _ALIGN_BYTES


def cuda_shm_reason() -> str | None:
    """Why tritonclient's CUDA shared memory cannot be used here; None when it can."""
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401  (needs cuda-python)
    except Exception as e:  # RuntimeError without cuda-python, ImportError/OSError without a driver
        return f"{type(e).__name__}: {e}"
    return None


def is_cuda(tensor: Any) -> bool:
    """True for a torch tensor on a CUDA device (numpy arrays and CPU tensors are host memory)."""
    return getattr(getattr(tensor, "device", None), "type", None) == "cuda"


def device_index(tensor: Any) -> int:
    """The CUDA device ordinal of a torch tensor (0 for the current device or the host)."""
    index = getattr(getattr(tensor, "device", None), "index", None)
    return index if isinstance(index, int) else 0


def dtype_name(tensor: Any) -> str:
    """numpy-style dtype name of a numpy array or torch tensor ('float32', 'float16', ...)."""
    dtype = tensor.dtype
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype).removeprefix("torch.")


def host_array(tensor: Any) -> np.ndarray:
    """A numpy array of a host or CUDA tensor (CUDA tensors are copied to the host)."""
    if isinstance(tensor, np.ndarray):
        return tensor
    return np.asarray(tensor.detach().cpu().numpy())


@dataclass(frozen=True)
class OutputLayout:
    """Each output's per-item shape and numpy dtype, and its offset for a batch of `max_batch`."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype[Any]]
    max_batch: int

    @classmethod
    def from_result(cls, arrays: dict[str, np.ndarray], max_batch: int) -> OutputLayout:
        return cls(
            {n: tuple(a.shape[1:]) for n, a in arrays.items()},
            {n: a.dtype for n, a in arrays.items()},
            max_batch,
        )

    def item_bytes(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64)) * self.dtypes[name].itemsize

    def offsets(self, base: int) -> dict[str, int]:
        """Where each output starts in a region whose outputs begin at `base`."""
        out, at = {}, base
        for name in self.shapes:
            out[name] = at
            at = _aligned(at + self.item_bytes(name) * self.max_batch)
        return out

    def nbytes(self) -> int:
        return sum(_aligned(self.item_bytes(n) * self.max_batch) for n in self.shapes)


class SystemRegion:
    """A POSIX shared-memory region this process writes inputs to and reads outputs from."""

    kind = "system"

    def __init__(self, name: str, size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.name, self.size, self.key = name, size, f"/{name}"
        self.handle = shm.create_shared_memory_region(name, self.key, size)
        self.registered = False

    def write(self, arrays: list[np.ndarray], offset: int = 0) -> None:
        """Copy arrays one after the other from `offset` (no stacking copy first)."""
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(a) for a in arrays], offset)

    def read(self, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A copy of an array in the region (the region is reused by the next request)."""
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(self.handle, dtype, list(shape), offset), copy=True)

    async def register(self, client: Any, timeout_s: float) -> None:
        await client.register_system_shared_memory(self.name, self.key, self.size, client_timeout=timeout_s)

    async def unregister(self, client: Any, timeout_s: float) -> None:
        await client.unregister_system_shared_memory(self.name, client_timeout=timeout_s)

    def destroy(self) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.destroy_shared_memory_region(self.handle)


_CUDA_WRITE_LOCK = threading.Lock()


@functools.cache
def cuda_shm_errors() -> tuple[type[Exception], ...]:
    """tritonclient's CUDA shared-memory exception type, where it imports (() elsewhere); looked
    up once (every CUDA batch asks)."""
    try:
        from tritonclient.utils.cuda_shared_memory import CudaSharedMemoryException
    except Exception:
        return ()
    return (CudaSharedMemoryException,)


class CudaRegion:
    """A CUDA shared-memory region (cudaMalloc + IPC handle) on the GPU the input tensors are on."""

    kind = "cuda"

    def __init__(self, name: str, size: int, device_id: int) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        self.name, self.size, self.device_id = name, size, device_id
        self.handle = cudashm.create_shared_memory_region(name, size, device_id)
        self.registered = False

    def write(self, tensor: Any) -> None:
        """Copy a contiguous CUDA (or host) tensor into the region through DLPack."""
        import tritonclient.utils.cuda_shared_memory as cudashm

        # one writer at a time: tritonclient creates its per-device copy stream on first use
        # without a lock, and a second thread's stream replacing the first destroys it mid-copy
        with _CUDA_WRITE_LOCK:
            cudashm.set_shared_memory_region_from_dlpack(self.handle, [tensor])

    async def register(self, client: Any, timeout_s: float) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        raw = cudashm.get_raw_handle(self.handle)
        await client.register_cuda_shared_memory(
            self.name, raw, self.device_id, self.size, client_timeout=timeout_s
        )

    async def unregister(self, client: Any, timeout_s: float) -> None:
        await client.unregister_cuda_shared_memory(self.name, client_timeout=timeout_s)

    def destroy(self) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        cudashm.destroy_shared_memory_region(self.handle)


Region = SystemRegion | CudaRegion


async def ensure_registered(region: Region, client: Any, timeout_s: float) -> None:
    """Register a region; one the server still holds under this name is replaced."""
    from tritonclient.utils import InferenceServerException

    if region.registered:
        return
    try:
        await region.register(client, timeout_s)
    except InferenceServerException as e:
        if "already in manager" not in (e.message() or ""):
            raise
        log.info("shared memory %s was still registered (server kept it): registering afresh", region.name)
        await region.unregister(client, timeout_s)
        await region.register(client, timeout_s)
    region.registered = True


class Slot:
    """The regions of one request in flight: host (input and/or outputs) and optionally CUDA input."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.host: SystemRegion | None = None
        self.cuda: CudaRegion | None = None
        self.output_base = 0  # where outputs start in `host`

    def regions(self) -> list[Region]:
        return [r for r in (self.host, self.cuda) if r is not None]

    def forget_registrations(self) -> None:
        for region in self.regions():
            region.registered = False


class SlotPool:
    """Slots for requests in flight; regions grow (re-created) when a batch needs more room."""

    def __init__(self, node_id: str, timeout_s: float) -> None:
        self.prefix = f"fg-{os.getpid()}-{node_id}"
        self.timeout_s = timeout_s  # every call to the server is bounded: a stopping one may not answer
        self.slots: list[Slot] = []
        self.free: list[Slot] = []

    def acquire(self) -> Slot:
        if self.free:
            return self.free.pop()
        slot = Slot(self.prefix)
        self.slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        self.free.append(slot)

    def forget_registrations(self) -> None:
        """After an outage: the server may have restarted and forgotten every region."""
        for slot in self.slots:
            slot.forget_registrations()

    async def size_host(self, slot: Slot, client: Any, input_bytes: int, outputs_bytes: int) -> SystemRegion:
        """The slot's system region with room for an input of `input_bytes` then the outputs."""
        need = _aligned(input_bytes) + outputs_bytes
        region = slot.host
        if region is None or region.size < need:
            if region is not None:
                await _drop(region, client, self.timeout_s)
            region = SystemRegion(f"{self.prefix}-h{time.monotonic_ns()}", need)
            slot.host = region
        slot.output_base = _aligned(input_bytes)
        return region

    async def size_cuda(self, slot: Slot, client: Any, input_bytes: int, device_id: int) -> CudaRegion:
        region = slot.cuda
        if region is None or region.size < input_bytes or region.device_id != device_id:
            if region is not None:
                await _drop(region, client, self.timeout_s)
            region = CudaRegion(f"{self.prefix}-c{time.monotonic_ns()}", input_bytes, device_id)
            slot.cuda = region
        return region

    async def close(self, client: Any) -> None:
        """Unregister (if the server is still there) and free every region."""
        for slot in self.slots:
            for region in slot.regions():
                await _drop(region, client, self.timeout_s)
        self.slots.clear()
        self.free.clear()


async def _drop(region: Region, client: Any, timeout_s: float) -> None:
    if region.registered and client is not None:
        try:
            await region.unregister(client, timeout_s)
        except Exception as e:  # the server may be gone; the memory is freed below either way
            log.debug("unregister %s failed: %s", region.name, e)
    region.registered = False
    try:
        region.destroy()
    except Exception as e:
        raise OperatorError(f"could not free shared memory {region.name}: {e}") from e
