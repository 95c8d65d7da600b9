"""Where a graph runs: GPU capability checks and the CPU/CUDA operator aliases.

Nothing heavy is imported when this module is: torch, PyNvVideoCodec and DALI are looked up
with `importlib.util.find_spec`, and imported only when a check is asked for (then cached).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from typing import Literal

from engine.errors import FramegraphError

log = logging.getLogger("framegraph.device")

Device = Literal["cpu", "cuda"]

OP_ALIASES: dict[str, dict[str, list[str]]] = {
    "decode": {"cpu": ["decode.pyav"], "cuda": ["decode.nvdec"]},
    "preprocess": {"cpu": ["preprocess.cpu"], "cuda": ["preprocess.dali", "preprocess.torch"]},
}
"""Device-neutral operator names and, per device, the implementations in order of preference."""


def installed(module: str) -> bool:
    """True when `module` can be found, without importing it (its parent package may load)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def import_error(module: str) -> str | None:
    """Why `module` cannot be imported (None: it imports). Imports it on the first call."""
    if not installed(module):
        return f"{module} is not installed"
    try:
        importlib.import_module(module)
    except Exception as e:  # a broken install raises anything (OSError, RuntimeError, ...)
        return f"{module} is installed but fails to import ({type(e).__name__}: {e})"
    return None


@functools.cache
def cuda_reason() -> str | None:
    """Why torch cannot use a CUDA GPU here (None: it can). Imports torch on the first call."""
    why = import_error("torch")
    if why is not None:
        return why
    import torch

    if getattr(torch.version, "cuda", None) is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        if not torch.cuda.is_available():
            return "torch finds no CUDA GPU (driver missing or no device visible)"
    except Exception as e:  # a broken driver raises from inside torch
        return f"torch cannot query CUDA ({type(e).__name__}: {e})"
    return None


def nvdec_reason() -> str | None:
    """Why NVDEC decoding (PyNvVideoCodec on a CUDA GPU) is unavailable (None: available)."""
    return cuda_reason() or import_error("PyNvVideoCodec")


def dali_reason() -> str | None:
    """Why GPU preprocessing with DALI is unavailable (None: available)."""
    return cuda_reason() or import_error("nvidia.dali")


def cuda_available() -> bool:
    """torch is installed with CUDA and sees a GPU."""
    return cuda_reason() is None


def nvdec_available() -> bool:
    """`decode.nvdec` can run: CUDA torch, a GPU and an importable PyNvVideoCodec."""
    return nvdec_reason() is None


def dali_available() -> bool:
    """`preprocess.dali` can run: CUDA torch, a GPU and an importable DALI."""
    return dali_reason() is None


def choose_device(requested: str = "auto") -> tuple[Device, str]:
    """The device a graph runs on, and why. `cuda` without its packages is a FramegraphError.

    auto picks cuda only when torch sees a CUDA GPU and PyNvVideoCodec imports.
    """
    if requested == "cpu":
        return "cpu", "cpu requested"
    if requested not in ("auto", "cuda"):
        raise FramegraphError(f"unknown device {requested!r}: use auto, cpu or cuda")
    missing = _gpu_missing()
    if not missing:
        import torch

        name = torch.cuda.get_device_name(0)
        return "cuda", f"{requested}: CUDA GPU {name} with torch {torch.__version__} and PyNvVideoCodec"
    if requested == "cuda":
        raise FramegraphError(
            "device 'cuda' was requested, but " + "; ".join(missing) + ". Install torch with CUDA and "
            "PyNvVideoCodec (pip install framegraph[gpu]) on a machine with an NVIDIA GPU, "
            "or set device: auto or cpu."
        )
    return "cpu", "auto: " + "; ".join(missing)


def _gpu_missing() -> list[str]:
    """Everything the cuda device lacks here (PyNvVideoCodec is imported only with a GPU)."""
    missing = []
    cuda = cuda_reason()
    if cuda is not None:
        missing.append(cuda)
    if not installed("PyNvVideoCodec"):
        missing.append("PyNvVideoCodec is not installed")
    elif cuda is None and (why := import_error("PyNvVideoCodec")) is not None:
        missing.append(why)
    return missing


def _unavailable(op: str) -> str | None:
    if op == "decode.nvdec":
        return nvdec_reason()
    if op == "preprocess.dali":
        return dali_reason()
    if op == "preprocess.torch":
        return cuda_reason()
    return None  # CPU operators need nothing beyond the base install


def resolve_alias(name: str, device: str) -> str:
    """The operator that implements `name` on `device` (names that are not aliases pass through).

    For cuda the first available candidate wins: preprocess.dali when DALI imports, else
    preprocess.torch. `device` may be auto (resolved with `choose_device`).
    """
    if name not in OP_ALIASES:
        return name
    dev = choose_device(device)[0] if device == "auto" else device
    if dev not in ("cpu", "cuda"):
        raise FramegraphError(f"unknown device {device!r}: use auto, cpu or cuda")
    reasons = []
    for candidate in OP_ALIASES[name][dev]:
        why = _unavailable(candidate)
        if why is None:
            return candidate
        reasons.append(f"{candidate}: {why}")
    raise FramegraphError(f"no {dev} implementation of {name!r} can run here: " + "; ".join(reasons))
