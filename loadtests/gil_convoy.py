"""How much a forward pass suffers from other Python threads: eager onnx2torch vs TorchScript.

    python loadtests/gil_convoy.py [--threads 1,4] [--seconds 2] [--size 128x128] [--json OUT]

The eager module that onnx2torch makes calls Python once per ONNX node (CenterFace: ~150 calls);
each call takes the GIL back, and while other threads want it, each waits up to the switch
interval (5 ms). In the engine those threads are the decoders, the postprocess, the tracker:
session 1 measured CenterFace at 0.36-0.72 s per batch inside the GPU graph, 11 ms alone. A
TorchScript trace (infer.torch's `runtime: torchscript`, the default) runs the whole pass in
C++ after one call. For each runtime this prints forward passes per second alone (the baseline,
measured beside it) and next to N threads that run pure Python, and the ratio of the two.
Then, for the trace, the first and second pass at each new batch size 1..8, with the JIT's
optimizing executor (which profiles and recompiles per shape) and without it (what infer.torch
and the Triton model use). The model runs on the CPU with one intra-op thread; the GIL behaves
the same with a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def spin(stop: threading.Event) -> None:
    """Pure Python work that wants the GIL all the time (a stand-in for per-frame host work)."""
    n = 0
    while not stop.is_set():
        n += 1


def rate(forward: Any, x: Any, seconds: float, threads: int) -> float:
    """Forward passes per second while `threads` spinning threads run."""
    stop = threading.Event()
    workers = [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            forward(x)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        stop.set()
        for w in workers:
            w.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,4", help="spinning threads, a comma list")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--size", default="128x128", help="input HxW (multiples of 32)")
    p.add_argument("--onnx", type=Path, default=ROOT / "triton_models/centerface/1/centerface.onnx")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import torch

    from operators.infer_torch import PlainExecution, jit_trace
    from operators.onnx_convert import convert_onnx, load_onnx

    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    eager = convert_onnx(load_onnx(args.onnx))
    x = torch.rand(1, 3, h, w) * 255
    with torch.inference_mode():
        # the trace as infer.torch runs it (no re-optimizing per shape)
        modules = {"eager": eager, "torchscript": PlainExecution(torch, jit_trace(torch, eager, x))}
        report: dict[str, Any] = {"input": [1, 3, h, w], "switch_interval_ms": sys.getswitchinterval() * 1000}
        for name, module in modules.items():
            for _ in range(5):
                module(x)
            alone = rate(module, x, args.seconds, 0)
            row: dict[str, Any] = {"alone_fps": round(alone, 1)}
            for n in (int(t) for t in args.threads.split(",")):
                busy = rate(module, x, args.seconds, n)
                row[f"with_{n}_threads_fps"] = round(busy, 1)
                row[f"ratio_{n}_threads"] = round(busy / alone, 3)
            report[name] = row
            print(f"{name:12s} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        # what the JIT's optimizing executor costs: the first passes at each new batch size
        traced = jit_trace(torch, eager, x)
        for name, module in (("optimizing", traced), ("plain", PlainExecution(torch, traced))):
            firsts = []
            for b in range(1, 9):
                xb = torch.rand(b, 3, h, w) * 255
                t0 = time.perf_counter()
                module(xb)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                module(xb)
                firsts.append([b, round(first * 1e3, 1), round((time.perf_counter() - t0) * 1e3, 1)])
            report[f"new_batch_size_ms_{name}"] = firsts
            print(f"{name:12s} [batch, first pass ms, next pass ms]: {firsts}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
