"""The TorchScript CenterFace on a real Triton (triton_models/centerface_torch), and how
scripts/triton picks the models it loads.

centerface_torch is what a GPU machine serves (configs/gpu.pbtxt, inputs on the GPU); here the
same model.py and model.pt run on a CPU instance, so everything but the device is checked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.conftest import TritonInstance

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["537", "538", "539", "540"]

pytestmark = pytest.mark.skipif(
    os.environ.get("FG_TORCH") == "0", reason="FG_TORCH=0: the Triton server has no torch"
)


async def _infer(client: object, x: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc.aio as grpcclient

    inp = grpcclient.InferInput("input.1", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
    result = await client.infer("centerface_torch", [inp], outputs=outs)  # type: ignore[attr-defined]
    return {n: result.as_numpy(n) for n in OUTPUTS}


async def test_concurrent_requests_of_several_shapes_each_get_their_own_rows(triton_url: str) -> None:
    """Concurrent requests (two input sizes, batches of 1-3; Triton's dynamic batcher may merge
    those of one size) each get exactly the outputs onnxruntime gives for them; a request of a
    bad size gets an error and spoils none."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(7)
    shapes = [(1, 3, 384, 640), (2, 3, 384, 640), (3, 3, 256, 320), (1, 3, 256, 320), (2, 3, 384, 640)]
    inputs = [(rng.random(s, np.float32) * 255).astype(np.float32) for s in shapes]
    bad = np.zeros((1, 3, 100, 100), np.float32)
    client = grpcclient.InferenceServerClient(triton_url)
    try:
        results = await asyncio.gather(*(_infer(client, x) for x in [*inputs, bad]), return_exceptions=True)
    finally:
        await client.close()
    *good, refused = results
    assert isinstance(refused, InferenceServerException)
    assert "multiples of 32, got 100x100" in str(refused)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(ROOT / "triton_models/centerface/1/centerface.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for x, got in zip(inputs, good, strict=True):
        assert isinstance(got, dict), got
        want = session.run(OUTPUTS, {"input.1": x})
        for name, w in zip(OUTPUTS, want, strict=True):
            assert got[name].shape == w.shape
            np.testing.assert_allclose(got[name], w, rtol=1e-3, atol=2e-3)


def _start(instance: TritonInstance) -> subprocess.CompletedProcess[str]:
    """`scripts/triton start` for `instance`, its output kept."""
    return subprocess.run(
        [ROOT / "scripts/triton", "start"],
        env=instance.env,
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )


def test_scripts_triton_skips_a_model_whose_requirements_are_not_met(tmp_path: Path) -> None:
    """A model directory whose REQUIRES names a module the server cannot import is left out with
    the reason, and the rest of the repository is served."""
    import httpx

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "triton_models/centerface", repo / "centerface")
    shutil.copytree(ROOT / "triton_models/centerface", repo / "needs_more")
    config = repo / "needs_more/config.pbtxt"
    config.write_text(config.read_text().replace('name: "centerface"', 'name: "needs_more"'))
    (repo / "needs_more/REQUIRES").write_text(
        "# what this model needs\nmodule no_such_module_fg\nfile 1/absent.bin\n"
    )

    instance = TritonInstance(f"test-requires-{os.getpid()}")
    instance.env["FG_TRITON_MODEL_REPO"] = str(repo)
    del instance.env["FG_TRITON_MODELS"]  # every model directory whose REQUIRES is met
    http_port = instance.env["FG_TRITON_HTTP_PORT"]
    done = _start(instance)
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "not loading needs_more: the server's Python" in done.stderr
        assert "cannot import no_such_module_fg" in done.stderr
        assert "needs_more/1/absent.bin is missing" in done.stderr
        index = httpx.post(f"http://127.0.0.1:{http_port}/v2/repository/index", json={}).json()
        states = {m["name"]: m.get("state") for m in index}
        assert states.get("centerface") == "READY", index
        assert states.get("needs_more") != "READY", index
    finally:
        instance("stop")


def test_the_gpu_configuration_is_what_triton_reads_with_config_gpu(tmp_path: Path) -> None:
    """FG_TRITON_CONFIG=gpu makes Triton read centerface_torch/configs/gpu.pbtxt: on this machine
    it parses and then fails for want of a GPU (KIND_GPU), and the start says so; the ONNX
    Runtime model, with no configs/gpu.pbtxt, keeps its CPU config. Offline, a model whose file
    is missing is left out instead of downloaded."""
    repo = tmp_path / "repo"
    for name in ("centerface", "centerface_torch", "textdet"):
        shutil.copytree(ROOT / "triton_models" / name, repo / name, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copy(ROOT / "triton_models/centerface/1/centerface.onnx", repo / "centerface/1/centerface.onnx")
    instance = TritonInstance(f"test-gpucfg-{os.getpid()}")
    instance.env.update(
        {"FG_TRITON_MODEL_REPO": str(repo), "FG_TRITON_CONFIG": "gpu", "FG_TRITON_OFFLINE": "1"}
    )
    del instance.env["FG_TRITON_MODELS"]
    done = _start(instance)
    try:
        assert done.returncode != 0
        assert "not downloaded: --check --skip-missing" in done.stderr
        assert "not loading textdet" in done.stderr
        assert "loading centerface centerface_torch (--model-config-name=gpu)" in done.stderr
        assert "centerface_torch has kind KIND_GPU but no GPUs are available" in done.stderr
    finally:
        instance("stop")
