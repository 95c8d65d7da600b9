"""Triton in k8s/, per overlay: it builds its model repository and serves gRPC; the GPU overlay
puts it on one GPU with the GPU configs, the CPU overlay runs the Python backend configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.k8s.manifests import (
    ROOT,
    Obj,
    _container,
    _env,
    _one,
    _rendered,
)
from tests.unit.k8s_render import _containers, _pod_specs


def test_triton_builds_its_model_repository_and_serves_grpc(objs: list[Obj]) -> None:
    triton = _container(objs, "triton", "triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["args"]
    assert 8001 in {p["containerPort"] for p in triton["ports"]}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    init = _container(objs, "triton", "models", init=True)
    script = "\n".join(init["args"])
    assert "scripts/setup_models.py --repo /models" in script
    assert 'cp "${d}config.gpu.pbtxt" "${d}config.pbtxt"' in script
    shared = {m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models"}
    assert shared == {m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/models"}
    # models that need torch in the server are left out (the NVIDIA image's Python has none) ...
    assert 'grep -qx "module torch" "${d}REQUIRES"' in script
    assert "centerface_torch" not in {m.name for m in _served_by_k8s()}
    # ... and every model it serves has the GPU config the gpu overlay switches to
    for model in _served_by_k8s():
        assert (model / "config.gpu.pbtxt").exists(), model.name


def _served_by_k8s() -> list[Path]:
    """The model directories the Triton initContainer keeps: those not asking for torch."""
    return [
        m
        for m in (ROOT / "triton_models").iterdir()
        if (m / "config.pbtxt").exists()
        and "module torch"
        not in ((m / "REQUIRES").read_text().splitlines() if (m / "REQUIRES").exists() else [])
    ]


def _gpu_requests(objs: list[Obj]) -> dict[str, Any]:
    out = {}
    for obj in objs:
        for pod in _pod_specs(obj):
            for c in _containers(pod):
                for part in ("requests", "limits"):
                    if "nvidia.com/gpu" in c.get("resources", {}).get(part, {}):
                        out[f"{obj['metadata']['name']}/{c['name']}/{part}"] = c["resources"][part][
                            "nvidia.com/gpu"
                        ]
    return out


def test_gpu_overlay_puts_triton_on_one_gpu_with_the_gpu_configs() -> None:
    objs = list(_rendered("gpu"))
    assert _gpu_requests(objs) == {"triton/triton/requests": 1, "triton/triton/limits": 1}
    pod = _one(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    assert _env(_container(objs, "triton", "models", init=True))["FG_MODEL_CONFIG"] == "gpu"
    assert "PYTHONPATH" not in _env(_container(objs, "triton", "triton"))


def test_cpu_overlay_runs_the_python_backend_configs_with_onnxruntime() -> None:
    objs = list(_rendered("cpu"))
    assert _gpu_requests(objs) == {}
    pod = _one(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    assert _env(_container(objs, "triton", "models", init=True))["FG_MODEL_CONFIG"] == "cpu"
    pydeps = _container(objs, "triton", "pydeps", init=True)
    assert pydeps["image"] == _container(objs, "triton", "triton")["image"]  # the same Python
    assert any(a.startswith("onnxruntime==") for a in pydeps["command"])
    target = pydeps["command"][pydeps["command"].index("--target") + 1]
    assert _env(_container(objs, "triton", "triton"))["PYTHONPATH"] == target


def test_both_overlays_pin_the_same_images() -> None:
    def images(overlay: str) -> set[str]:
        return {c["image"] for o in _rendered(overlay) for p in _pod_specs(o) for c in _containers(p)}

    assert images("cpu") == images("gpu")
