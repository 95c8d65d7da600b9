"""Triton Python-backend model: run an ONNX file with ONNX Runtime on the CPU.

The same file serves every model of this repository that runs on the Python backend
(triton_models/centerface, triton_models/textdet); keep the copies identical.

Everything model-specific comes from config.pbtxt:
- the input and output tensors (names, FP32, dims) -- the ONNX graph must use the same
  names;
- parameters (all optional, string values):
    onnx_file             file next to this one (default: "<model name>.onnx", then
                          "model.onnx")
    intra_op_num_threads  ONNX Runtime intra-op threads per instance (0 = ORT default)
    inter_op_num_threads  ONNX Runtime inter-op threads (0 = ORT default)
    spatial_multiple      H and W of every input must be multiples of this (default 32)

Requests that Triton hands over together (dynamic batching) are concatenated along the
batch axis and run as one ONNX Runtime call, grouped by input shape; each request gets
back exactly its own rows. A request whose H or W is not a multiple of
spatial_multiple gets an error response and does not affect the others.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _param(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        name = config["name"]
        candidates = [_param(config, "onnx_file", ""), f"{name}.onnx", "model.onnx"]
        path = next(
            (
                os.path.join(model_dir, c)
                for c in candidates
                if c and os.path.isfile(os.path.join(model_dir, c))
            ),
            None,
        )
        if path is None:
            raise pb_utils.TritonModelException(
                f"{name}: no ONNX file in {model_dir} (tried {[c for c in candidates if c]}); "
                f"run scripts/setup_models.py"
            )

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_param(config, "intra_op_num_threads", "0"))
        opts.inter_op_num_threads = int(_param(config, "inter_op_num_threads", "0"))
        opts.log_severity_level = 3  # the exported graphs warn about initializers as inputs
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.multiple = int(_param(config, "spatial_multiple", "32"))
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.input_names if n not in graph_inputs] + [
            n for n in self.output_names if n not in graph_outputs
        ]
        if missing:
            raise pb_utils.TritonModelException(
                f"{name}: config names {missing} are not in {os.path.basename(path)} "
                f"(graph inputs {sorted(graph_inputs)}, outputs {sorted(graph_outputs)})"
            )
        self.name = name
        self.path = path

    def _check(self, arrays):
        for n, a in zip(self.input_names, arrays, strict=True):
            if a.ndim != 4:
                return f"{n}: expected [batch, C, H, W], got shape {list(a.shape)}"
            h, w = a.shape[-2:]
            if h <= 0 or w <= 0 or h % self.multiple or w % self.multiple:
                return f"{n}: H and W must be positive multiples of {self.multiple}, got {h}x{w}"
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # input shapes (without batch) -> [(request index, arrays)]
        for i, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            error = self._check(arrays)
            if error:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {error}")
                )
                continue
            key = tuple(a.shape[1:] for a in arrays)
            groups.setdefault(key, []).append((i, arrays))

        for members in groups.values():
            feeds = {}
            for k, n in enumerate(self.input_names):
                parts = [arrays[k] for _, arrays in members]
                feeds[n] = (
                    np.ascontiguousarray(parts[0], dtype=np.float32)
                    if len(parts) == 1
                    else np.concatenate(parts, axis=0).astype(np.float32, copy=False)
                )
            try:
                outputs = self.session.run(self.output_names, feeds)
            except Exception as exc:  # one bad group must not fail the others
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.name}: onnxruntime: {exc}")
                    )
                continue
            start = 0
            for i, arrays in members:
                stop = start + arrays[0].shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(n, np.ascontiguousarray(o[start:stop]))
                        for n, o in zip(self.output_names, outputs, strict=True)
                    ]
                )
                start = stop
        return responses

    def finalize(self):
        self.session = None
