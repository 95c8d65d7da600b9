"""The Kubernetes manifests in k8s/, rendered for the manifest tests, and helpers over a rendering.

Rendering: `kubectl kustomize` when kubectl (with kustomize v5 built in) is on PATH; otherwise
`tests.unit.k8s_render.render`, a minimal kustomize for exactly the subset k8s/ uses; where
kubectl exists the two renderings must be equal (test_render.py).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.k8s_render import WORKLOAD_KINDS, render

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
OVERLAYS = ["cpu", "gpu"]
K8S_VERSION = "1.30"
CRD_GROUPS = {"kafka.strimzi.io"}
STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
WORKER = "framegraph-worker"
DASHBOARD_METRICS = {
    "framegraph_frames_in_total": {"graph", "stream"},
    "framegraph_frames_out_total": {"graph", "stream"},
    "framegraph_dropped_total": {"graph", "node", "stream", "reason"},
    "framegraph_latency_ms": {"graph", "stream", "quantile"},
    "framegraph_stage_ms": {"graph", "node", "kind", "quantile"},
    "framegraph_node_events_total": {"graph", "node", "event"},
    "framegraph_stream_up": {"graph", "stream"},
    "framegraph_stream_state": {"graph", "stream", "state"},
}
# Added by the scrape (kubernetes-pods job); framegraph_streams_active is per worker.
SCRAPE_LABELS = {"namespace", "pod"}
ALL_METRICS = {**DASHBOARD_METRICS, "framegraph_streams_active": set()}
Obj = dict[str, Any]


@functools.cache
def _kubectl() -> str | None:
    """kubectl, when it is on PATH and has kustomize v5 built in (older ones lack `labels`)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        return None
    match = re.match(r"v(\d+)\.", version)
    return kubectl if match and int(match.group(1)) >= 5 else None


def _kubectl_kustomize(overlay: Path) -> list[Obj] | None:
    kubectl = _kubectl()
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    path = K8S / "overlays" / overlay
    objs = _kubectl_kustomize(path)
    return tuple(objs if objs is not None else render(path))


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def _generated(objs: list[Obj], kind: str, name: str) -> Obj:
    """A generated ConfigMap/Secret, with or without its hash suffix."""
    hits = [
        o
        for o in objs
        if o["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
    ]
    assert len(hits) == 1, f"expected one {kind} {name}"
    return hits[0]


def _container(objs: list[Obj], workload: str, name: str, init: bool = False) -> Obj:
    pod = _one(objs, "Deployment", workload)["spec"]["template"]["spec"]
    hits = [c for c in pod.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(hits) == 1, f"{workload} has no container {name}"
    return hits[0]


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions are not evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(objs: list[Obj]) -> list[dict[str, str]]:
    return [o["spec"]["template"]["metadata"]["labels"] for o in objs if o["kind"] in WORKLOAD_KINDS]


def _secret_values(secret: Obj) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    out.update(secret.get("stringData", {}))
    return out


def _port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
