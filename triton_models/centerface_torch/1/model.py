"""Triton Python-backend model: a TorchScript module, on the GPU or the CPU Triton gives it.

Made for the GPU path on a machine whose tritonserver has no onnxruntime/TensorRT backend (the
one in the nvidia-pytriton wheel): CenterFace converted from ONNX to torch
(scripts/export_torch_models.py writes `model.pt` next to this file) runs on the instance's
device. With `FORCE_CPU_ONLY_INPUT_TENSORS: no` (configs/gpu.pbtxt) the inputs that clients put
in CUDA shared memory reach the model on the GPU without a host copy (DLPack); the outputs are
copied to the host once, here, since the reply goes to the client's host memory anyway.

Everything model-specific comes from the model configuration:
- the input and output tensors (one input; outputs in the order the module returns them);
- parameters (all optional, string values):
    torchscript_file  file next to this one (default "model.pt")
    fp16              "yes": run in half precision on the GPU (inputs/outputs stay FP32)
    spatial_multiple  H and W of every input must be multiples of this (default 32)

Requests Triton hands over together are concatenated along the batch axis (grouped by shape)
and run as one forward pass; each request gets back exactly its own rows. A request with a bad
shape gets an error response and does not affect the others; so does a group whose forward pass
fails (out of memory, ...).
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack


def _param(config, key, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(model_dir, _param(config, "torchscript_file", "model.pt"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} is missing; run scripts/export_torch_models.py "
                f"(converts the ONNX model with onnx2torch)"
            )
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.fp16 = _param(config, "fp16", "no").lower() in ("yes", "true", "1") and self.device.type == "cuda"
        self.dtype = torch.float16 if self.fp16 else torch.float32
        model = torch.jit.load(path, map_location=self.device).eval()
        self.model = model.half() if self.fp16 else model
        self.multiple = int(_param(config, "spatial_multiple", "32"))
        if len(config["input"]) != 1:
            raise pb_utils.TritonModelException(f"{self.name}: one input is supported, config has {len(config['input'])}")
        self.input_name = config["input"][0]["name"]
        self.output_names = [t["name"] for t in config["output"]]
        self.path = path

    def _tensor(self, request):
        t = pb_utils.get_input_tensor_by_name(request, self.input_name)
        x = from_dlpack(t.to_dlpack())
        if x.dim() != 4:
            return None, f"{self.input_name}: expected [batch, C, H, W], got shape {list(x.shape)}"
        h, w = x.shape[-2:]
        if h <= 0 or w <= 0 or h % self.multiple or w % self.multiple:
            return None, f"{self.input_name}: H and W must be positive multiples of {self.multiple}, got {h}x{w}"
        return x, None

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # input shape (without batch) -> [(request index, tensor)]
        for i, request in enumerate(requests):
            x, error = self._tensor(request)
            if error:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {error}")
                )
                continue
            groups.setdefault(tuple(x.shape[1:]), []).append((i, x))

        for members in groups.values():
            try:
                # optimized_execution(False): no re-profiling and recompiling for every new batch
                # size (the JIT's optimizing executor does that: see operators/infer_torch.py PlainExecution)
                with torch.inference_mode(), torch.jit.optimized_execution(False):
                    batch = torch.cat([x.to(self.device, non_blocking=True) for _, x in members])
                    outs = self.model(batch.to(self.dtype))
                    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
                    if len(outs) != len(self.output_names):
                        raise RuntimeError(
                            f"the module returned {len(outs)} outputs, the config names {len(self.output_names)}"
                        )
                    # to the host here (one copy per output, which waits for the forward pass): the
                    # reply leaves through gRPC or the client's system shared memory either way
                    outs = [o.float().cpu().numpy() for o in outs]
            except Exception as exc:  # one bad group must not fail the others
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.name}: torch: {exc}")
                    )
                continue
            start = 0
            for i, x in members:
                stop = start + x.shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(n, np.ascontiguousarray(o[start:stop]))
                        for n, o in zip(self.output_names, outs)
                    ]
                )
                start = stop
        return responses

    def finalize(self):
        self.model = None
