"""onnx2torch without torchvision: graphs convert, the stand-in never outlives the import, and
graphs that need torchvision are refused with the reason."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine import device
from engine.errors import OperatorError

pytestmark = pytest.mark.skipif(
    not all(device.installed(m) for m in ("torch", "onnx", "onnx2torch")),
    reason="torch/onnx/onnx2torch missing",
)


def _graph(op: str) -> object:
    """A one-node ONNX graph: Relu (plain), or NonMaxSuppression (needs torchvision in onnx2torch)."""
    import onnx
    from onnx import TensorProto, helper

    if op == "Relu":
        node = helper.make_node("Relu", ["x"], ["y"])
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    else:
        node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["y"])
        inputs = [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 3]),
        ]
        outputs = [helper.make_tensor_value_info("y", TensorProto.INT64, [-1, 3])]
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs))
    onnx.checker.check_model(model)
    return model


def test_a_plain_graph_converts_and_runs() -> None:
    import torch

    from operators.onnx_convert import convert_onnx

    module = convert_onnx(_graph("Relu"))
    out = module(torch.tensor([[-1.0, 0.0, 2.0, -3.0]]))
    np.testing.assert_array_equal(out.numpy(), [[0.0, 0.0, 2.0, 0.0]])
    if device.installed("torchvision"):
        return
    assert "torchvision" not in sys.modules, "the stand-in must not outlive onnx2torch's import"
    assert "torchvision.ops" not in sys.modules


def test_a_graph_needing_torchvision_is_refused_with_the_reason() -> None:
    from operators.onnx_convert import convert_onnx, torchvision_error

    if torchvision_error() is None:
        pytest.skip("torchvision imports here: NMS converts")
    with pytest.raises(OperatorError, match=r"uses \['NonMaxSuppression'\].*torchvision does not import"):
        convert_onnx(_graph("NonMaxSuppression"))


def test_the_stand_in_raises_when_a_torchvision_function_is_called() -> None:
    from operators.onnx_convert import MissingTorchvision, _standin_modules

    mods = _standin_modules("No module named 'torchvision'")
    with pytest.raises(MissingTorchvision, match=r"torchvision.ops.nms is needed; .*No module named"):
        mods["torchvision"].ops.nms(None, None, 0.5)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = mods["torchvision.ops"].__file__
