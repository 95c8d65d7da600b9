"""`infer.triton`: batched inference on a Triton server over gRPC (aio), shared memory when local.

Model metadata is checked against the graph at setup, before frames flow. When the server is
down or too slow, frames are marked degraded (`inference_unavailable`) and counted: they are
never passed on as "nothing detected".
"""

from __future__ import annotations

import asyncio
import logging
import os
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

log = logging.getLogger("framegraph.infer")
DEGRADED = "inference_unavailable"
_NP_TO_TRITON = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int64": "INT64"}


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
    shared_memory: Literal["auto", "system", "off"] = Field(
        "auto", description="auto: system shared memory when the server is on this host."
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
        groups.setdefault((f.tensor.shape, f.tensor.dtype.str), []).append(f)
    out = []
    for group in groups.values():
        out += [group[i : i + max_batch] for i in range(0, len(group), max_batch)]
    return out


class _ShmSlot:
    """A system shared-memory region for one in-flight request's input tensor."""

    def __init__(self, name: str, size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.name = name
        self.size = size
        self.key = f"/{name}"
        self.handle = shm.create_shared_memory_region(name, self.key, size)
        self.registered = False

    def write(self, batch: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [batch])

    def destroy(self) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.destroy_shared_memory_region(self.handle)


class TritonInfer(Operator[TritonConfig]):
    """Frames with `tensor` in, the same frames with `outputs` (or degraded) out."""

    Config = TritonConfig
    batching = True

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
        self.slots: list[_ShmSlot] = []
        self.free_slots: asyncio.Queue[_ShmSlot] | None = None

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
        if self._use_shm():
            self.free_slots = asyncio.Queue()

    def _use_shm(self) -> bool:
        mode = self.config.shared_memory
        host = self.url.rsplit(":", 1)[0]
        return mode == "system" or (mode == "auto" and host in ("127.0.0.1", "localhost", "::1"))

    async def _check_model(self) -> None:
        from tritonclient.utils import InferenceServerException

        cfg, where = self.config, f"node {self.ctx.node_id}: Triton at {self.url}"
        try:
            live = await self.client.is_server_live(client_timeout=cfg.timeout_s)
        except InferenceServerException as e:
            raise InferenceUnavailable(f"{where} does not answer: {e.message()}") from e
        if not live:
            raise InferenceUnavailable(f"{where} is not live")
        try:
            meta = await self.client.get_model_metadata(cfg.model, cfg.version, as_json=True)
            model_cfg = (await self.client.get_model_config(cfg.model, cfg.version, as_json=True))["config"]
        except InferenceServerException as e:
            index = await self.client.get_model_repository_index(as_json=True)
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
            dtype = _NP_TO_TRITON.get(u.dtype, u.dtype)
            fits = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=False))
            if not fits or dtype != self.input_dtype:
                raise OperatorError(
                    f"{where}: model {self.config.model!r} input {self.input_name!r} takes "
                    f"{self.input_dtype} {dims}, but the preprocess feeding it makes {dtype} {shape}"
                )

    async def teardown(self) -> None:
        if self.client is not None:
            for slot in self.slots:
                if slot.registered:
                    try:
                        await self.client.unregister_system_shared_memory(slot.name)
                    except Exception as e:  # the server may be gone; the region is freed below
                        log.debug("unregister %s failed: %s", slot.name, e)
                slot.destroy()
            self.slots.clear()
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
        batch = np.stack([f.tensor for f in frames])
        last_error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            try:
                results = await self._request(batch)
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
        if self.down_since is None:
            self.down_since = now
            log.error("node %s: inference unavailable, frames degraded: %s", self.ctx.node_id, last_error)
            for slot in self.slots:
                slot.registered = False  # a restarted server has forgotten the regions
        self.next_probe_s = time.monotonic() + self.config.probe_interval_s
        self._degrade(frames)

    def _degrade(self, frames: list[Frame]) -> None:
        self.ctx.metrics.events["degraded_frames"] += len(frames)
        for f in frames:
            f.outputs = None
            f.degraded.add(DEGRADED)

    async def _request(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import tritonclient.grpc.aio as grpcclient
        from tritonclient.utils import InferenceServerException

        datatype = _NP_TO_TRITON[batch.dtype.name]
        inp = grpcclient.InferInput(self.input_name, list(batch.shape), datatype)
        full_size = batch[0].nbytes * self.max_batch  # sized once for the largest batch
        slot = await self._slot(full_size) if self.free_slots is not None else None
        try:
            if slot is not None:
                slot.write(batch)
                if not slot.registered:
                    await self.client.register_system_shared_memory(
                        slot.name, slot.key, slot.size, client_timeout=self.config.timeout_s
                    )
                    slot.registered = True
                inp.set_shared_memory(slot.name, batch.nbytes)
            else:
                inp.set_data_from_numpy(batch)
            outputs = [grpcclient.InferRequestedOutput(n) for n in self.output_names]
            result = await self.client.infer(
                self.config.model,
                [inp],
                model_version=self.config.version,
                outputs=outputs,
                client_timeout=self.config.timeout_s,
            )
        except InferenceServerException as e:
            raise InferenceUnavailable(f"{self.config.model}: {e.message()}") from e
        finally:
            if slot is not None and self.free_slots is not None:
                self.free_slots.put_nowait(slot)
        return {n: result.as_numpy(n) for n in self.output_names}

    async def _slot(self, nbytes: int) -> _ShmSlot:
        """A free shared-memory slot large enough for `nbytes` (one per request in flight)."""
        assert self.free_slots is not None
        slot = self.free_slots.get_nowait() if not self.free_slots.empty() else None
        if slot is not None and slot.size >= nbytes:
            return slot
        if slot is not None:  # too small: replace it
            if slot.registered:
                await self.client.unregister_system_shared_memory(slot.name)
            slot.destroy()
            self.slots.remove(slot)
        new = _ShmSlot(f"fg-{os.getpid()}-{self.ctx.node_id}-{time.monotonic_ns()}", nbytes)
        self.slots.append(new)
        return new
