"""Convert an ONNX graph to a torch module with onnx2torch, also where torchvision cannot load.

onnx2torch imports torchvision when it is imported, but uses it only in the converters of two
ONNX node types: NonMaxSuppression and RoiAlign. torchvision often cannot be had beside a CPU
build of torch (PyPI's wheel is built against the CUDA one and fails with "operator
torchvision::nms does not exist"). When torchvision does not import, onnx2torch is imported
with a stand-in `torchvision` whose every function raises `MissingTorchvision`, and
`convert_onnx` refuses graphs with those two node types up front; for every other graph the
conversion is exactly onnx2torch's. The stand-in is removed from `sys.modules` right after, so
nothing else mistakes it for torchvision. Nothing here is imported until a function is called.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any

from engine.errors import OperatorError

log = logging.getLogger("framegraph.onnx_convert")

NEEDS_TORCHVISION = frozenset({"NonMaxSuppression", "RoiAlign"})
_STANDIN = ("torchvision", "torchvision.ops")


class MissingTorchvision(RuntimeError):
    """A torchvision function was called where torchvision could not be imported."""


def _standin_modules(why: str) -> dict[str, types.ModuleType]:
    """`torchvision` and `torchvision.ops` whose attributes are functions that raise."""

    def missing(name: str) -> Any:
        if name.startswith("__"):  # module protocol lookups (__file__, __path__, ...): not there
            raise AttributeError(name)

        def call(*_args: Any, **_kwargs: Any) -> Any:
            raise MissingTorchvision(f"torchvision.ops.{name} is needed; torchvision does not import: {why}")

        return call

    ops = types.ModuleType("torchvision.ops")
    ops.__getattr__ = missing  # type: ignore[method-assign]
    top = types.ModuleType("torchvision")
    top.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": top, "torchvision.ops": ops}


def torchvision_error() -> str | None:
    """Why torchvision does not import, or None when it does."""
    try:
        importlib.import_module("torchvision")
    except Exception as e:  # ImportError, or RuntimeError from its operator registration
        return f"{type(e).__name__}: {e}"
    return None


def import_onnx2torch() -> Any:
    """The onnx2torch module; with the torchvision stand-in when torchvision does not import."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    why = torchvision_error()
    if why is None:
        return importlib.import_module("onnx2torch")
    for name in _STANDIN:  # a half-imported torchvision left behind by the failed import
        sys.modules.pop(name, None)
    importlib.import_module("torch")  # first, so that torch's own imports never see the stand-in
    log.info("torchvision does not import (%s): onnx2torch loads without NMS/RoiAlign", why)
    sys.modules.update(_standin_modules(why))
    try:
        return importlib.import_module("onnx2torch")
    finally:
        for name in _STANDIN:
            sys.modules.pop(name, None)


def load_onnx(path: Path) -> Any:
    """The ONNX ModelProto in `path`; OperatorError when onnx is missing or the file is not ONNX."""
    try:
        onnx: Any = importlib.import_module("onnx")
    except ImportError as e:
        raise OperatorError(f"converting {path.name} to torch needs onnx: {e} (pip install onnx)") from e
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise OperatorError(f"{path}: not a readable ONNX model: {e}") from e


def convert_onnx(graph: Any) -> Any:
    """A torch.nn.Module (eval mode, on the CPU) computing the ONNX `graph` (a ModelProto)."""
    used = {n.op_type for n in graph.graph.node}
    blocked = sorted(used & NEEDS_TORCHVISION)
    if blocked and (why := torchvision_error()) is not None:
        raise OperatorError(
            f"this ONNX graph uses {blocked}, which onnx2torch converts with torchvision, and "
            f"torchvision does not import: {why}"
        )
    try:
        convert = import_onnx2torch().convert
    except ImportError as e:
        raise OperatorError(f"converting ONNX to torch needs onnx2torch: {e} (pip install onnx2torch)") from e
    return convert(graph).eval()
