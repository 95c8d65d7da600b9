"""A model's forward pass captured as CUDA graphs: one launch per batch instead of one per layer.

Why: an onnx2torch model is a Python module per ONNX node; its forward pass makes hundreds of
Python calls, each holding the GIL. In a process where dozens of decoder threads want the GIL
too, every forward pass waits in line many times (session 1 measured CenterFace at 0.36-0.72 s
per batch inside the graph, 11 ms alone). A captured graph replays the whole forward pass with
one call. Graphs have static shapes, so one graph is captured per batch-size bucket (powers of
two up to `max_batch`) and a batch is padded up to its bucket; the buckets share one memory pool.
The static input and outputs are shared, so `run` holds a lock from copy-in to copy-out.

`graph_api` is torch's (torch.cuda.CUDAGraph / torch.cuda.graph) unless a test gives its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a graph: 1, 2, 4, ... below max_batch, and max_batch itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n frames (n <= the largest bucket)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} is larger than the largest graph ({buckets[-1]})")


class TorchGraphApi:
    """torch's CUDA graph calls, in the shape CudaGraphs uses (a test passes a fake instead)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.device = torch, device

    def warm_up(self, fn: Callable[[], Any]) -> None:
        """Run fn a few times on a side stream (capture needs its allocations made and freed once)."""
        torch = self.torch
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)

    def capture(self, fn: Callable[[], Any], pool: Any) -> tuple[Any, Any, Any]:
        """(graph, what fn returned while captured, the graph's memory pool)."""
        graph = self.torch.cuda.CUDAGraph()
        # thread_local: other threads (decoders, DALI) may allocate while this one captures
        with self.torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = fn()
        return graph, out, graph.pool()


class CudaGraphs:
    """Replays a captured forward pass for batches of up to `max_batch` inputs of one shape."""

    def __init__(
        self,
        torch: Any,
        forward: Callable[[Any], Any],
        input_shape: Sequence[int],
        dtype: Any,
        device: Any,
        max_batch: int,
        graph_api: Any = None,
    ) -> None:
        self.torch = torch
        self.forward = forward
        self.input_shape = tuple(input_shape)
        self.dtype, self.device = dtype, device
        self.buckets = batch_buckets(max_batch)
        self.api = graph_api if graph_api is not None else TorchGraphApi(torch, device)
        self.graphs: dict[int, tuple[Any, Any, list[Any]]] = {}  # bucket -> (graph, input, outputs)
        self.lock = threading.Lock()
        self.replays = 0
        self.padded_items = 0

    def capture(self) -> None:
        """Capture every bucket, the largest first (the smaller ones reuse its memory pool)."""
        torch = self.torch
        with torch.inference_mode():
            for b in self.buckets:
                self.api.warm_up(self._call_with(self._zeros(b)))
            pool = None
            for b in sorted(self.buckets, reverse=True):
                static_in = self._zeros(b)
                graph, out, pool = self.api.capture(self._call_with(static_in), pool)
                outs = list(out) if isinstance(out, list | tuple) else [out]
                self.graphs[b] = (graph, static_in, outs)

    def _zeros(self, batch: int) -> Any:
        return self.torch.zeros((batch, *self.input_shape), dtype=self.dtype, device=self.device)

    def _call_with(self, x: Any) -> Callable[[], Any]:
        return lambda: self.forward(x)

    def fits(self, parts: Sequence[Any]) -> bool:
        """Whether these inputs can go through the graphs (same per-item shape, not too many)."""
        return 0 < len(parts) <= self.buckets[-1] and all(tuple(p.shape) == self.input_shape for p in parts)

    def run(self, parts: Sequence[Any], read: Callable[[list[Any]], Any]) -> Any:
        """Copy the inputs into their bucket's static input, replay, and return `read(outputs)`
        (outputs sliced to the real batch) while the lock still keeps the next batch out."""
        n = len(parts)
        b = bucket_for(n, self.buckets)
        graph, static_in, outs = self.graphs[b]
        with self.lock, self.torch.inference_mode():
            for i, p in enumerate(parts):
                static_in[i].copy_(p, non_blocking=True)
            if n < b:  # padding: zeros, not the last batch's frames
                static_in[n:].zero_()
                self.padded_items += b - n
            graph.replay()
            self.replays += 1
            return read([o[:n] for o in outs])
