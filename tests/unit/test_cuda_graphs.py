"""operators/cuda_graphs.py on the CPU: buckets, padding, slicing and the lock, with a fake graph
API that replays the forward pass eagerly into the captured (static) outputs, as CUDA graphs do.
tests/gpu/test_gpu_path.py checks the real capture on a GPU."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from operators.cuda_graphs import CudaGraphs, batch_buckets, bucket_for

torch = pytest.importorskip("torch")


class FakeGraph:
    """Replay = run the captured closure again and write into the outputs it returned at capture."""

    def __init__(self, fn: Callable[[], Any], outs: Any) -> None:
        self.fn, self.outs = fn, outs

    def replay(self) -> None:
        fresh = self.fn()
        for static, new in zip(self.outs, fresh, strict=True):
            static.copy_(new)


class FakeApi:
    def __init__(self) -> None:
        self.warmups = 0
        self.pools: list[Any] = []

    def warm_up(self, fn: Callable[[], Any]) -> None:
        self.warmups += 1
        fn()

    def capture(self, fn: Callable[[], Any], pool: Any) -> tuple[Any, Any, Any]:
        self.pools.append(pool)
        out = fn()
        return FakeGraph(fn, out), out, "pool"


def model() -> Any:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(x: Any) -> tuple[Any, Any]:
        y = conv(x)
        return y, y.sum(dim=(2, 3))

    return forward


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(1) == [1]
    assert bucket_for(3, [1, 2, 4, 8]) == 4
    assert bucket_for(8, [1, 2, 4, 8]) == 8
    with pytest.raises(ValueError, match="larger than the largest graph"):
        bucket_for(9, [1, 2, 4, 8])


def test_replayed_batches_equal_the_eager_forward_pass_and_padding_is_zeros() -> None:
    forward = model()
    api = FakeApi()
    graphs = CudaGraphs(torch, forward, (3, 8, 8), torch.float32, "cpu", 8, graph_api=api)
    graphs.capture()
    assert sorted(graphs.graphs) == [1, 2, 4, 8]
    assert api.warmups == 4
    assert api.pools == [None, "pool", "pool", "pool"]  # the largest first; the rest share its pool
    for n in (1, 3, 5, 8):
        parts = [torch.rand(3, 8, 8) for _ in range(n)]
        got = graphs.run(parts, lambda outs: [o.clone() for o in outs])
        with torch.inference_mode():
            want = forward(torch.stack(parts))
        assert [tuple(g.shape) for g in got] == [(n, 4, 8, 8), (n, 4)]
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w, atol=1e-6)
        static_in = graphs.graphs[bucket_for(n, graphs.buckets)][1]
        assert torch.count_nonzero(static_in[n:]) == 0  # no stale frames in the padding
    assert graphs.replays == 4
    assert graphs.padded_items == 1 + 3  # 3 -> 4, 5 -> 8


def test_only_inputs_of_the_captured_shape_and_size_go_through_the_graphs() -> None:
    graphs = CudaGraphs(torch, model(), (3, 8, 8), torch.float32, "cpu", 4, graph_api=FakeApi())
    assert graphs.fits([torch.zeros(3, 8, 8)] * 4)
    assert not graphs.fits([torch.zeros(3, 8, 8)] * 5)
    assert not graphs.fits([torch.zeros(3, 8, 9)])
    assert not graphs.fits([])


def test_two_threads_never_mix_their_batches() -> None:
    forward = model()
    graphs = CudaGraphs(torch, forward, (3, 8, 8), torch.float32, "cpu", 4, graph_api=FakeApi())
    graphs.capture()
    errors: list[str] = []

    def worker(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(30):
            parts = [torch.rand(3, 8, 8, generator=gen) for _ in range(3)]
            got = graphs.run(parts, lambda outs: outs[1].clone())
            with torch.inference_mode():
                want = forward(torch.stack(parts))[1]
            if not torch.allclose(got, want, atol=1e-5):
                errors.append(f"thread {seed}: another batch's outputs")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert graphs.replays == 90
