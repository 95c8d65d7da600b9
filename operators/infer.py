"""`infer.triton`: batched inference on a Triton server over gRPC (aio), shared memory when local.

Model metadata is checked against the graph at setup, before frames flow. When the server is
down or too slow, frames are marked degraded (`inference_unavailable`) and counted: they are
never passed on as "nothing detected".

Tensors may be numpy arrays (preprocess.cpu) or torch tensors on the CPU or a GPU
(preprocess.torch / preprocess.dali). With a local server, host tensors go through system
shared memory and CUDA tensors through CUDA shared memory (a device-to-device copy: frames stay
on the GPU from NVDEC to the model); outputs come back through system shared memory once their
shapes are known. See `operators/triton_shm.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from engine.errors import InferenceUnavailable, OperatorError
from engine.frame import Frame, Item
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel
from operators.triton_local import LocalTriton
from operators.triton_shm import (
    NP_TO_TRITON,
    CudaRegion,
    OutputLayout,
    Slot,
    SlotPool,
    SystemRegion,
    cuda_shm_errors,
    cuda_shm_reason,
    device_index,
    dtype_name,
    ensure_registered,
    host_array,
    is_cuda,
)
from operators.urls import is_local_address, redact_url, scrub

log = logging.getLogger("framegraph.infer")
DEGRADED = "inference_unavailable"


class TritonConfig(StrictModel):
    """Options of `infer.triton`."""

    url: str = Field("", description="host:port of Triton's gRPC endpoint; empty: start a local one.")
    model: str = Field(min_length=1, description="Model name in the server's repository.")
    version: str = Field("", description="Model version; empty: the server's policy (latest).")
    input: str | None = Field(None, description="Input tensor name; default: the model's only input.")
    outputs: list[str] | None = Field(None, description="Outputs to fetch; default: all.")
    timeout_s: float = Field(5.0, gt=0, description="Deadline of one request.")
    retries: int = Field(1, ge=0, le=10, description="Retries of a failed request before degrading.")
    retry_backoff_s: float = Field(0.05, ge=0, description="Wait before a retry.")
    probe_interval_s: float = Field(
        1.0,
        gt=0,
        description="While the server is down, try it at most this often; frames meanwhile degrade.",
    )
    shared_memory: Literal["auto", "system", "cuda", "off"] = Field(
        "auto",
        description=(
            "auto: when the server is on this host, host tensors through system shared memory and "
            "CUDA tensors through CUDA shared memory where tritonclient can (cuda-python), else "
            "through the host; system: host memory only (CUDA tensors copied to the host); cuda: "
            "CUDA tensors through CUDA shared memory or fail at setup (server on this machine's "
            "GPU); off: tensors inside the gRPC messages."
        ),
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # `version: 1` (or --set ...version=1) reads as a number; Triton names versions by text
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("shared_memory", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False and `on` as True
        return {False: "off", True: "system"}.get(value, value) if isinstance(value, bool) else value


def _split_batches(frames: list[Frame], max_batch: int) -> list[list[Frame]]:
    groups: dict[tuple[Any, ...], list[Frame]] = {}
    for f in frames:
        t = f.tensor
        groups.setdefault((tuple(t.shape), dtype_name(t), str(getattr(t, "device", "cpu"))), []).append(f)
    out = []
    for group in groups.values():
        out += [group[i : i + max_batch] for i in range(0, len(group), max_batch)]
    return out


class TritonInfer(Operator[TritonConfig]):
    """Frames with `tensor` in, the same frames with `outputs` (or degraded) out."""

    Config = TritonConfig
    batching = True
    consumes, produces = "frames+tensor", "+outputs"

    def __init__(self, config: TritonConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.client: Any = None
        self.url = config.url
        self.local: LocalTriton | None = None
        self.input_name = ""
        self.input_dtype = ""
        self.output_names: list[str] = []
        self.max_batch = 1
        self.down_since: float | None = None
        self.next_probe_s = 0.0
        self.pool: SlotPool | None = None  # None: tensors travel inside the gRPC messages
        self.cuda_shm: bool | None = None  # None: not decided yet (on the first CUDA batch)
        self.layouts: dict[tuple[Any, ...], OutputLayout] = {}  # by input item shape and dtype

    async def setup(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        if not self.url:
            self.local = LocalTriton()
            self.url = await self.local.acquire()
        self.client = grpcclient.InferenceServerClient(self.url)
        try:
            await self._check_model()
        except Exception:
            await self.teardown()
            raise
        mode = self.config.shared_memory
        local = is_local_address(self.url)
        if mode == "cuda":
            why = cuda_shm_reason()
            if why is not None:
                await self.teardown()
                raise OperatorError(
                    f"node {self.ctx.node_id}: shared_memory: cuda needs tritonclient's CUDA shared "
                    f"memory ({why}); pip install 'tritonclient[cuda]' (cuda-python), or use auto"
                )
            self.cuda_shm = True
        elif mode in ("off", "system") or not local:
            self.cuda_shm = False
        if mode in ("system", "cuda") or (mode == "auto" and local):
            self.pool = SlotPool(self.ctx.node_id, self.config.timeout_s)

    async def _check_model(self) -> None:
        from tritonclient.utils import InferenceServerException

        cfg, where = self.config, f"node {self.ctx.node_id}: Triton at {redact_url(self.url)}"
        try:
            live = await self.client.is_server_live(client_timeout=cfg.timeout_s)
        except InferenceServerException as e:
            raise InferenceUnavailable(f"{where} does not answer: {e.message()}") from e
        if not live:
            raise InferenceUnavailable(f"{where} is not live")
        try:
            meta = await self.client.get_model_metadata(
                cfg.model, cfg.version, as_json=True, client_timeout=cfg.timeout_s
            )
            model_cfg = (
                await self.client.get_model_config(
                    cfg.model, cfg.version, as_json=True, client_timeout=cfg.timeout_s
                )
            )["config"]
        except InferenceServerException as e:
            index = await self.client.get_model_repository_index(as_json=True, client_timeout=cfg.timeout_s)
            names = sorted(m["name"] for m in index.get("models", []))
            raise OperatorError(
                f"{where}: model {cfg.model!r} (version {cfg.version or 'latest'}) is not available: "
                f"{e.message()}; models there: {', '.join(names) or 'none'}"
            ) from e
        self.max_batch = max(1, int(model_cfg.get("max_batch_size", 0)))
        inputs = {i["name"]: i for i in meta["inputs"]}
        name = cfg.input or (next(iter(inputs)) if len(inputs) == 1 else "")
        if name not in inputs:
            raise OperatorError(f"{where}: model {cfg.model!r} has inputs {sorted(inputs)}; set 'input'")
        self.input_name = name
        self.input_dtype = inputs[name]["datatype"]
        dims = [int(d) for d in inputs[name]["shape"]]
        known_outputs = [o["name"] for o in meta["outputs"]]
        missing = sorted(set(cfg.outputs or []) - set(known_outputs))
        if missing:
            raise OperatorError(
                f"{where}: model {cfg.model!r} has no outputs {missing}; it has {known_outputs}"
            )
        self.output_names = cfg.outputs or known_outputs
        self._check_upstream(dims[1:] if model_cfg.get("max_batch_size", 0) else dims, where)

    def _check_upstream(self, dims: list[int], where: str) -> None:
        """The preprocess node feeding this one must produce the shape and dtype the model takes."""
        for up in self.ctx.upstream:
            if not all(hasattr(up, a) for a in ("width", "height", "layout", "dtype")):
                continue
            u: Any = up
            shape = [3, u.height, u.width] if u.layout == "chw" else [u.height, u.width, 3]
            dtype = NP_TO_TRITON.get(u.dtype, u.dtype)
            fits = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=False))
            if not fits or dtype != self.input_dtype:
                raise OperatorError(
                    f"{where}: model {self.config.model!r} input {self.input_name!r} takes "
                    f"{self.input_dtype} {dims}, but the preprocess feeding it makes {dtype} {shape}"
                )

    async def teardown(self) -> None:
        if self.client is not None:
            if self.pool is not None:
                await self.pool.close(self.client)
            await self.client.close()
            self.client = None
        if self.local is not None:
            await self.local.release()
            self.local = None

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        frames = [f for f in items if isinstance(f, Frame)]
        for f in frames:
            if f.tensor is None:
                raise OperatorError(f"node {self.ctx.node_id}: frame has no tensor; add a preprocess node")
        batches = _split_batches(frames, self.max_batch)
        await asyncio.gather(*(self._infer(b) for b in batches))
        return items

    async def _infer(self, frames: list[Frame]) -> None:
        now = time.monotonic()
        if self.down_since is not None and now < self.next_probe_s:
            self._degrade(frames)
            return
        self.ctx.metrics.events[f"batch_{len(frames)}"] += 1
        last_error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                results = await self._request([f.tensor for f in frames])
            except InferenceUnavailable as e:
                last_error = e
                if attempt < self.config.retries:
                    self.ctx.metrics.events["retries"] += 1
                    await asyncio.sleep(self.config.retry_backoff_s)
                continue
            for i, f in enumerate(frames):
                f.outputs = {name: arr[i] for name, arr in results.items()}
            if self.down_since is not None:
                log.warning(
                    "node %s: Triton at %s is back after %.1f s",
                    self.ctx.node_id,
                    self.url,
                    time.monotonic() - self.down_since,
                )
                self.ctx.metrics.events["recoveries"] += 1
                self.down_since = None
            return
        self.ctx.metrics.last_error = scrub(str(last_error))
        if self.down_since is None:
            self.down_since = now
            log.error("node %s: inference unavailable, frames degraded: %s", self.ctx.node_id, last_error)
            if self.pool is not None:
                self.pool.forget_registrations()  # a restarted server has forgotten the regions
        self.next_probe_s = time.monotonic() + self.config.probe_interval_s
        self._degrade(frames)

    def _degrade(self, frames: list[Frame]) -> None:
        self.ctx.metrics.events["degraded_frames"] += len(frames)
        for f in frames:
            f.outputs = None
            f.degraded.add(DEGRADED)

    async def trial_inference(self, tensor: np.ndarray) -> None:
        """One request of a batch of one (`validate --connect`: does the model take this shape?)."""
        await self._request([tensor])

    async def _request(self, tensors: list[Any]) -> dict[str, np.ndarray]:
        """One inference call for a batch of same-shape tensors; outputs as (B, ...) numpy arrays."""
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        first, n = tensors[0], len(tensors)
        cuda_errors = cuda_shm_errors() if is_cuda(first) else ()
        item_shape, dtype = tuple(int(d) for d in first.shape), dtype_name(first)
        if dtype not in NP_TO_TRITON:
            raise OperatorError(f"node {self.ctx.node_id}: tensors of {dtype} cannot go to Triton")
        inp = grpcclient.InferInput(self.input_name, [n, *item_shape], NP_TO_TRITON[dtype])
        key = (item_shape, dtype)
        layout = self.layouts.get(key)
        slot = self.pool.acquire() if self.pool is not None else None
        outputs = [grpcclient.InferRequestedOutput(name) for name in self.output_names]
        offsets: dict[str, int] = {}
        try:
            if slot is None:
                inp.set_data_from_numpy(np.stack([host_array(t) for t in tensors]))
            else:
                host = await self._put_input(slot, inp, tensors, layout)
                if layout is not None and host is not None:
                    offsets = layout.offsets(slot.output_base)
                    for out in outputs:
                        out.set_shared_memory(
                            host.name, layout.item_bytes(out.name()) * n, offsets[out.name()]
                        )
            result = await self.client.infer(
                self.config.model,
                [inp],
                model_version=self.config.version,
                outputs=outputs,
                client_timeout=self.config.timeout_s,
            )
            if offsets and slot is not None and slot.host is not None and layout is not None:
                host = slot.host
                self.ctx.metrics.events["output_shm_batches"] += 1
                return {
                    name: host.read(layout.dtypes[name], (n, *layout.shapes[name]), offsets[name])
                    for name in self.output_names
                }
            arrays = {name: result.as_numpy(name) for name in self.output_names}
            if slot is not None and all(a is not None and a.shape[0] == n for a in arrays.values()):
                self.layouts[key] = OutputLayout.from_result(arrays, self.max_batch)
            return arrays
        except cuda_errors as e:  # cudaMalloc or the device-to-device copy of a CUDA region
            raise InferenceUnavailable(f"{self.config.model}: CUDA shared memory: {e}") from e
        except InferenceServerException as e:
            if offsets:  # outputs may have changed shape: learn them again from a plain reply
                self.layouts.pop(key, None)
            if self.pool is not None and "shared memory region" in (e.message() or ""):
                # a server restarted since we registered ("Unable to find shared memory region"):
                # the retry registers every region afresh instead of failing the same way
                self.pool.forget_registrations()
            said = e.message() or type(e).__name__
            if "deadline exceeded" in said.lower():  # a hung or overloaded server: say which, how long
                where, limit = redact_url(self.url), self.config.timeout_s
                said = f"no answer from Triton at {where} within timeout_s {limit:g} s ({said})"
            model = f"{self.config.model}: "
            raise InferenceUnavailable(said if said.startswith(model) else model + said) from e
        finally:
            if slot is not None and self.pool is not None:
                self.pool.release(slot)

    async def _put_input(
        self, slot: Slot, inp: Any, tensors: list[Any], layout: OutputLayout | None
    ) -> SystemRegion | None:
        """Write the batch into the slot's shared memory and point `inp` at it; the host region back."""
        assert self.pool is not None
        first, n = tensors[0], len(tensors)
        item_bytes = int(np.prod(first.shape, dtype=np.int64)) * np.dtype(dtype_name(first)).itemsize
        outputs_bytes = layout.nbytes() if layout is not None else 0
        if is_cuda(first) and self._cuda_shm_usable():
            region = await self.pool.size_cuda(
                slot, self.client, item_bytes * self.max_batch, device_index(first)
            )
            await self.ctx.run_pinned(_write_cuda, region, tensors)
            if await self._register_cuda(region):
                inp.set_shared_memory(region.name, item_bytes * n)
                self.ctx.metrics.events["cuda_shm_batches"] += 1
                if outputs_bytes == 0:
                    return None
                host = await self.pool.size_host(slot, self.client, 0, outputs_bytes)
                await ensure_registered(host, self.client, self.config.timeout_s)
                return host
        if is_cuda(first):
            self.ctx.metrics.events["cuda_host_copies"] += n
        host = await self.pool.size_host(slot, self.client, item_bytes * self.max_batch, outputs_bytes)
        await self.ctx.run_blocking(host.write, [host_array(t) for t in tensors])
        await ensure_registered(host, self.client, self.config.timeout_s)
        inp.set_shared_memory(host.name, item_bytes * n)
        return host

    def _cuda_shm_usable(self) -> bool:
        if self.cuda_shm is None:  # auto, local server: decided on the first CUDA batch
            why = cuda_shm_reason()
            self.cuda_shm = why is None
            if why is not None:
                log.warning(
                    "node %s: CUDA tensors go to Triton through host memory (no CUDA shared memory: %s)",
                    self.ctx.node_id,
                    why,
                )
        return self.cuda_shm

    async def _register_cuda(self, region: CudaRegion) -> bool:
        """Register a CUDA region; in auto mode a server that refuses it turns CUDA shm off (False)."""
        from tritonclient.utils import InferenceServerException

        try:
            await ensure_registered(region, self.client, self.config.timeout_s)
        except InferenceServerException as e:
            if self.config.shared_memory == "cuda" or not await self._server_live():
                raise
            log.warning(
                "node %s: Triton refused CUDA shared memory (%s): CUDA tensors go through host memory",
                self.ctx.node_id,
                e.message(),
            )
            self.ctx.metrics.events["cuda_shm_refused"] += 1
            self.cuda_shm = False
            return False
        return True

    async def _server_live(self) -> bool:
        try:
            return bool(await self.client.is_server_live(client_timeout=self.config.timeout_s))
        except Exception:
            return False


def _write_cuda(region: CudaRegion, tensors: list[Any]) -> None:
    """Stack a batch of CUDA tensors on their GPU and copy it into a CUDA region (device to device)."""
    import torch

    batch = torch.stack(tensors) if len(tensors) > 1 else tensors[0].unsqueeze(0).contiguous()
    region.write(batch)
