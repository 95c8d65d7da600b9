"""`infer.torch`: batched in-process inference of an ONNX model converted to torch (onnx2torch).

The model (CenterFace by default) runs on the GPU (fp16 if asked) or on the CPU. Frames keep
their `tensor` (torch on any device, or numpy); each batch is copied to the host once per
output, and `frame.outputs` becomes {output name: numpy array without the batch axis}, exactly
as infer.triton sets it, so the postprocess operators work unchanged. A batch that fails at
run time (out of GPU memory, ...) marks its frames degraded (`inference_unavailable`).
torch, onnx and onnx2torch are imported at setup, never when this module is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from engine.errors import OperatorError
from engine.frame import Frame, Item
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel
from operators.cuda_graphs import CudaGraphs
from operators.preprocess import fed_tensor

log = logging.getLogger("framegraph.infer_torch")
DEGRADED = "inference_unavailable"
ROOT = Path(__file__).resolve().parents[1]
_ERRORS_LOGGED = 5


class TorchInferConfig(StrictModel):
    """Options of `infer.torch`."""

    onnx_path: str = Field(
        "triton_models/centerface/1/centerface.onnx",
        description="The ONNX model; a relative path is looked up in the working directory, then "
        "in the framegraph checkout.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda when torch sees a GPU.")
    gpu_id: int = Field(0, ge=0, le=63, description="CUDA device of the model.")
    fp16: bool = Field(False, description="Run the model in half precision (cuda only).")
    output_names: list[str] | None = Field(
        None, min_length=1, description="Outputs to return; default: all of the graph's, in order."
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Largest batch one forward pass takes.")
    warmup: bool = Field(True, description="On cuda, run batches of 1 and max_batch at setup.")
    runtime: Literal["torchscript", "eager"] = Field(
        "torchscript",
        description="torchscript: the converted model is traced (torch.jit.trace) at setup and runs "
        "in TorchScript's interpreter, which holds the GIL once per forward pass, not once per layer "
        "(the eager onnx2torch module makes a Python call per ONNX node, and with decoder threads "
        "about, each call waits for the GIL); a trace that does not reproduce the eager outputs is "
        "dropped (logged, counted torchscript_refused). eager: the onnx2torch module as it is.",
    )
    cuda_graphs: bool = Field(
        False,
        description="On cuda, capture the forward pass as CUDA graphs (one per power-of-two batch "
        "size up to max_batch; batches padded up): one launch per batch instead of one Python call "
        "per layer. A model that cannot be captured runs as before (logged).",
    )

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> TorchInferConfig:
        if self.fp16 and self.device == "cpu":
            raise ValueError("fp16 needs device cuda (or auto on a GPU machine)")
        return self


def resolve_model_path(path: str) -> Path:
    """The model file: as given, else relative to the checkout; OperatorError if neither exists."""
    p = Path(path)
    places = [Path.cwd()] if p.is_absolute() else list(dict.fromkeys([Path.cwd(), ROOT]))
    for place in places:
        if (place / p).is_file():
            return place / p
    raise OperatorError(
        f"infer.torch: model file {path!r} not found (looked in {', '.join(map(str, places))}); "
        "run scripts/setup_models.py for the default CenterFace model"
    )


def _dims(value_info: Any) -> list[int]:
    """An ONNX input's dimensions, -1 where symbolic."""
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


class TorchModel:
    """An ONNX graph converted by onnx2torch, on its device, with the graph's input/output names."""

    def __init__(self, path: Path, device: str, gpu_id: int, fp16: bool) -> None:
        from engine.device import cuda_reason, import_error, installed
        from operators.onnx_convert import convert_onnx, load_onnx

        for module in ("torch", "onnx", "onnx2torch"):
            # onnx2torch itself is imported by convert_onnx (with a torchvision stand-in if need be)
            why = import_error(module) if module != "onnx2torch" else None
            if module == "onnx2torch" and not installed(module):
                why = "onnx2torch is not installed"
            if why is not None:
                raise OperatorError(f"infer.torch needs {module}: {why} (pip install torch onnx onnx2torch)")
        import torch

        if device == "auto":
            device = "cuda" if cuda_reason() is None else "cpu"
        elif device == "cuda" and (why := cuda_reason()) is not None:
            raise OperatorError(f"infer.torch: device cuda requested, but {why}")
        if fp16 and device != "cuda":
            log.warning("infer.torch: fp16 ignored on the CPU; running fp32")
            fp16 = False
        graph = load_onnx(path)
        initializers = {i.name for i in graph.graph.initializer}
        inputs = [i for i in graph.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise OperatorError(f"infer.torch: {path} has {len(inputs)} inputs; one image input is supported")
        self.input_name = inputs[0].name
        self.input_dims = _dims(inputs[0])
        self.output_names = [o.name for o in graph.graph.output]
        self.torch: Any = torch
        self.device: Any = torch.device("cuda", gpu_id) if device == "cuda" else torch.device("cpu")
        self.dtype: Any = torch.float16 if fp16 else torch.float32
        model = convert_onnx(graph).to(self.device)
        self.model: Any = model.half() if fp16 else model

        self.graphs: CudaGraphs | None = None
        self.traced = False

    def describe(self) -> str:
        graphs = f", CUDA graphs for batches {self.graphs.buckets}" if self.graphs else ""
        runtime = "torchscript" if self.traced else "eager"
        return f"{self.device} {'fp16' if self.dtype == self.torch.float16 else 'fp32'} {runtime}{graphs}"

    def trace(self, input_shape: list[int]) -> float:
        """Replace the module by its TorchScript trace for inputs of `input_shape` (no batch axis).

        The trace is checked at a batch of 2 against the eager module; raises (and keeps the eager
        one) if the outputs differ by more than 1e-3 of their range. Returns that difference."""
        torch = self.torch
        gen = torch.Generator(device=self.device).manual_seed(0)
        example = torch.rand([1, *input_shape], generator=gen, device=self.device).to(self.dtype) * 255
        probe = torch.rand([2, *input_shape], generator=gen, device=self.device).to(self.dtype) * 255
        with torch.inference_mode():
            traced = PlainExecution(torch, jit_trace(torch, self.model, example))
            want, got = _as_list(self.model(probe)), _as_list(traced(probe))
        if len(got) != len(want):
            raise OperatorError(f"the trace returns {len(got)} outputs, the module {len(want)}")
        worst = 0.0
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise OperatorError(f"traced output shape {list(g.shape)} != eager {list(w.shape)}")
            scale = max(1.0, float(w.abs().max()))
            worst = max(worst, float((g.float() - w.float()).abs().max()) / scale)
        if worst > 1e-3:
            raise OperatorError(f"the trace differs from the eager module by {worst:.3g} (relative)")
        self.model = PlainExecution(torch, traced)
        self.traced = True
        return worst

    def capture_graphs(self, input_shape: list[int], max_batch: int) -> None:
        """Capture the forward pass for inputs of `input_shape` (no batch axis); raises if it cannot."""
        graphs = CudaGraphs(self.torch, self.model, input_shape, self.dtype, self.device, max_batch)
        graphs.capture()
        self.graphs = graphs

    def run(self, tensors: list[Any], names: list[str]) -> dict[str, np.ndarray]:
        """One forward pass over a batch; {name: host float32 array (B, ...)}."""
        torch = self.torch
        with torch.inference_mode():
            parts = [
                t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
                for t in tensors
            ]
            if self.graphs is not None and self.graphs.fits(parts):
                return self.graphs.run(parts, lambda outs: self._read(outs, names))  # type: ignore[no-any-return]
            batch = torch.stack([p.to(self.device, non_blocking=True) for p in parts]).to(self.dtype)
            return self._read(_as_list(self.model(batch)), names)

    def _read(self, outs: list[Any], names: list[str]) -> dict[str, np.ndarray]:
        """The named outputs, on the host as float32."""
        if len(outs) != len(self.output_names):
            raise OperatorError(
                f"infer.torch: the model returned {len(outs)} outputs; "
                f"its graph names {len(self.output_names)}"
            )
        by_name = dict(zip(self.output_names, outs, strict=True))
        return {n: by_name[n].float().cpu().numpy() for n in names}


def jit_trace(torch: Any, module: Any, example: Any) -> Any:
    """torch.jit.trace(module, example), without its deprecation warning.

    torch 2.13 marks TorchScript deprecated (in favour of torch.compile / torch.export); it is
    still the one way here to run a module without a Python call per layer that needs no compiler
    toolchain at run time, and Triton's PyTorch backend serves the same files. If a later torch
    drops it, the trace fails and infer.torch runs eagerly (counted torchscript_refused)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.trace.* is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(module, example, check_trace=False, strict=False)


class PlainExecution:
    """A TorchScript module called without the JIT's optimizing executor.

    That executor profiles the first calls for each new input shape and then recompiles; batches
    of 1..max_batch keep paying it (CenterFace, CPU, 128x128, `loadtests/gil_convoy.py`: first
    passes at batch 1 and 2 took 67 and 32 ms with it, 7 and 11 ms without; larger batches were
    within noise). Without it, TorchScript's interpreter runs the traced graph as recorded."""

    def __init__(self, torch: Any, module: Any) -> None:
        self.torch, self.module = torch, module

    def __call__(self, *args: Any) -> Any:
        with self.torch.jit.optimized_execution(False):
            return self.module(*args)


def _as_list(out: Any) -> list[Any]:
    """A module's outputs as a list (one tensor, or a list/tuple of them)."""
    return list(out) if isinstance(out, list | tuple) else [out]


def _split(frames: list[Frame], max_batch: int) -> list[list[Frame]]:
    """Batches of frames whose tensors stack: same shape, at most max_batch each."""
    groups: dict[tuple[Any, ...], list[Frame]] = {}
    for f in frames:
        t = f.tensor
        groups.setdefault((tuple(t.shape), str(t.dtype), str(getattr(t, "device", "cpu"))), []).append(f)
    return [g[i : i + max_batch] for g in groups.values() for i in range(0, len(g), max_batch)]


class TorchInfer(Operator[TorchInferConfig]):
    """Frames with `tensor` in, the same frames with `outputs` (or degraded) out."""

    consumes, produces = "frames+tensor", "+outputs"
    Config = TorchInferConfig
    batching = True

    def __init__(self, config: TorchInferConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.model: TorchModel | None = None
        self.output_names: list[str] = []
        self.errors_logged = 0

    async def setup(self) -> None:
        cfg = self.config
        path = resolve_model_path(cfg.onnx_path)
        self.model = await self.ctx.run_pinned(TorchModel, path, cfg.device, cfg.gpu_id, cfg.fp16)
        known = self.model.output_names
        missing = [n for n in cfg.output_names or [] if n not in known]
        if missing:
            raise OperatorError(
                f"node {self.ctx.node_id}: model {path.name} has no outputs {missing}; it has {known}"
            )
        self.output_names = cfg.output_names or known
        shape = self._check_upstream()
        if cfg.runtime == "torchscript" and shape is None:
            log.warning(
                "node %s: runtime eager: no preprocess upstream gives a shape to trace", self.ctx.node_id
            )
        elif cfg.runtime == "torchscript":
            try:
                await self.ctx.run_pinned(self.model.trace, shape)
            except Exception as e:  # a model whose trace bakes in shapes, or that cannot be traced
                self.ctx.metrics.events["torchscript_refused"] += 1
                log.warning("node %s: runtime eager: the TorchScript trace failed: %s", self.ctx.node_id, e)
        if shape is not None and cfg.warmup and self.model.device.type == "cuda":
            await self.ctx.run_pinned(self._warmup, shape)
        if cfg.cuda_graphs and self.model.device.type != "cuda":
            log.warning("node %s: cuda_graphs ignored on %s", self.ctx.node_id, self.model.device)
        elif cfg.cuda_graphs and shape is None:
            log.warning(
                "node %s: cuda_graphs off: no preprocess upstream says the input shape", self.ctx.node_id
            )
        elif cfg.cuda_graphs:
            try:
                await self.ctx.run_pinned(self.model.capture_graphs, shape, cfg.max_batch)
            except Exception as e:  # a model with host syncs or dynamic shapes cannot be captured
                self.ctx.metrics.events["cuda_graphs_refused"] += 1
                log.warning("node %s: cuda_graphs off: capture failed: %s", self.ctx.node_id, e)
        log.info("node %s: %s on %s", self.ctx.node_id, path.name, self.model.describe())

    def _check_upstream(self) -> list[int] | None:
        """The preprocess feeding this node must make the model's input shape; returns it."""
        assert self.model is not None
        dims = self.model.input_dims[1:]
        fed = fed_tensor(self.ctx.upstream)
        if fed is None:
            return None
        shape = fed[0]
        fits = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=False))
        if not fits:
            raise OperatorError(
                f"node {self.ctx.node_id}: model input {self.model.input_name!r} takes {dims} "
                f"(batch axis left out), but the preprocess feeding it makes {shape}"
            )
        return shape

    async def trial_inference(self, tensor: np.ndarray) -> None:
        """One forward pass of a batch of one (`validate --connect`: does the model take this shape?)."""
        assert self.model is not None
        await self.ctx.run_pinned(self.model.run, [tensor], self.output_names)

    def _warmup(self, shape: list[int]) -> None:
        assert self.model is not None
        for n in sorted({1, self.config.max_batch}):
            self.model.run([np.zeros(shape, np.float32)] * n, self.output_names)

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        frames = [f for f in items if isinstance(f, Frame)]
        for f in frames:
            if f.tensor is None:
                raise OperatorError(f"node {self.ctx.node_id}: frame has no tensor; add a preprocess node")
        for batch in _split(frames, self.config.max_batch):
            await self.ctx.run_pinned(self._infer, batch)
        return items

    def _infer(self, frames: list[Frame]) -> None:
        assert self.model is not None
        try:
            results = self.model.run([f.tensor for f in frames], self.output_names)
        except (RuntimeError, MemoryError) as e:  # CUDA errors and out-of-memory are RuntimeErrors
            self.ctx.metrics.events["degraded_frames"] += len(frames)
            self.ctx.metrics.last_error = f"{type(e).__name__}: {e}"
            if self.errors_logged < _ERRORS_LOGGED:
                self.errors_logged += 1
                log.error(
                    "node %s: inference failed, %d frames degraded: %s", self.ctx.node_id, len(frames), e
                )
            for f in frames:
                f.outputs = None
                f.degraded.add(DEGRADED)
            return
        for i, f in enumerate(frames):
            f.outputs = {name: arr[i] for name, arr in results.items()}
