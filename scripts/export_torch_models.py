#!/usr/bin/env python3
"""Write the TorchScript files the Triton torch models serve (triton_models/*_torch/1/model.pt).

Each is an ONNX model of the repository converted with onnx2torch (operators/onnx_convert.py,
which also works where torchvision does not), traced with torch.jit.trace on the CPU, and
checked before it is kept: the traced module must give the converted module's outputs for a
batch and an input size other than the ones it was traced with (CenterFace: batch 2 at 256x320
against a trace at batch 1, 384x640). A file is rewritten only when the ONNX file or the torch
version changed (`model.pt.json` beside it says which it was made from).

    scripts/export_torch_models.py [--repo DIR] [--check]

Needs torch, onnx and onnx2torch in the Python that runs it (`make install` puts them in .venv;
on the GPU machine, the image's torch plus the carried onnx2torch wheel). scripts/triton runs it
before it starts a server whose Python has torch. Exit 0: every file is in place and current;
1: a conversion or check failed; 2: --check and a file is missing or stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Export:
    """One TorchScript file: from which ONNX file, traced at which input shape."""

    model: str  # the Triton model directory that serves it
    onnx: str  # relative to the model repository
    trace_shape: tuple[int, ...]
    check_shape: tuple[int, ...]
    input_scale: float  # inputs are uniform in [0, input_scale)


EXPORTS = [
    Export("centerface_torch", "centerface/1/centerface.onnx", (1, 3, 384, 640), (2, 3, 256, 320), 255.0),
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp_for(onnx_path: Path) -> dict[str, str]:
    """What a TorchScript file is made from: the ONNX file and the torch release (read from the
    package metadata: importing torch takes seconds, and an up-to-date file needs none)."""
    from importlib.metadata import version

    return {"onnx": onnx_path.name, "onnx_sha256": sha256_file(onnx_path), "torch": version("torch")}


def current(out: Path, want: dict[str, str]) -> bool:
    meta = out.with_name(out.name + ".json")
    try:
        return out.is_file() and json.loads(meta.read_text()) == want
    except (OSError, ValueError):
        return False


def export(spec: Export, onnx_path: Path, out: Path) -> float:
    """Convert, trace, check; write `out` atomically. Returns the largest output difference."""
    import torch

    from operators.infer_torch import jit_trace
    from operators.onnx_convert import convert_onnx, load_onnx

    module = convert_onnx(load_onnx(onnx_path))
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(spec.trace_shape, generator=gen) * spec.input_scale
    probe = torch.rand(spec.check_shape, generator=gen) * spec.input_scale
    with torch.inference_mode():
        traced = jit_trace(torch, module, example)
        want = module(probe)
        got = traced(probe)
    want = list(want) if isinstance(want, list | tuple) else [want]
    got = list(got) if isinstance(got, list | tuple) else [got]
    if len(got) != len(want):
        raise RuntimeError(f"traced module returns {len(got)} outputs, the converted one {len(want)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            raise RuntimeError(f"output {i}: traced shape {list(g.shape)} != converted {list(w.shape)}")
        worst = max(worst, float((g - w).abs().max()))
    if worst > 1e-4:
        shape = list(spec.check_shape)
        raise RuntimeError(f"traced module differs from the converted one by {worst:.3g} at {shape}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".model-", suffix=".pt")
    os.close(fd)
    try:
        traced.save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT / "triton_models", help="model repository")
    ap.add_argument("--check", action="store_true", help="only say whether every file is current")
    args = ap.parse_args(argv)
    status = 0
    for spec in EXPORTS:
        if not (args.repo / spec.model).is_dir():
            continue
        onnx_path = args.repo / spec.onnx
        out = args.repo / spec.model / "1" / "model.pt"
        if not onnx_path.is_file():
            print(f"[export_torch_models] {spec.model}: {onnx_path} missing (run scripts/setup_models.py)")
            status = max(status, 1)
            continue
        want = stamp_for(onnx_path)
        if current(out, want):
            print(f"[export_torch_models] ok      {out} (from {spec.onnx}, torch {want['torch']})")
            continue
        if args.check:
            print(f"[export_torch_models] stale   {out}")
            status = 2
            continue
        try:
            worst = export(spec, onnx_path, out)
        except Exception as e:
            print(f"[export_torch_models] ERROR {spec.model}: {type(e).__name__}: {e}", file=sys.stderr)
            status = max(status, 1)
            continue
        out.with_name(out.name + ".json").write_text(json.dumps(want, indent=1) + "\n")
        print(
            f"[export_torch_models] wrote   {out} (from {spec.onnx}, torch {want['torch']}; "
            f"traced = converted within {worst:.2g} at {list(spec.check_shape)})"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
