"""The Kubernetes manifests in k8s/: each overlay renders, every object validates, and the
properties the deployment relies on hold. Offline and fast.

Rendering: `kubectl kustomize` when kubectl (with kustomize v5 built in) is on PATH;
otherwise `render()` below, a minimal kustomize written for exactly the subset k8s/ uses
(resources, namespace, labels, images, patches (strategic merge and JSON 6902),
configMapGenerator / secretGenerator with kustomize's own name hash). It refuses any other
kustomization field, and where kubectl exists the two renderings must be equal.

Validation: built-in kinds against the Kubernetes JSON schemas bundled in the PyPI package
kubernetes-validate (strict: unknown fields fail). Strimzi's custom resources have no
schema there: their shape and cross-references are checked by hand below.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.k8s_render import CLUSTER_SCOPED, WORKLOAD_KINDS, _containers, _pod_specs, render

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(params=OVERLAYS)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return copy.deepcopy(list(_rendered(request.param)))


# --------------------------------------------------------------------------------------
# helpers over a rendering
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# rendering and schemas
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_equals_kubectl_kustomize(overlay: str) -> None:
    path = K8S / "overlays" / overlay
    real = _kubectl_kustomize(path)
    if real is None:
        pytest.skip("no kubectl with kustomize v5 on PATH: the tests use the Python renderer alone")
    ours = render(path)
    assert sorted(map(_key, ours)) == sorted(map(_key, real))
    by_key = {_key(o): o for o in real}
    for obj in ours:
        assert obj == by_key[_key(obj)], f"{_key(obj)} differs from kubectl kustomize"


def test_python_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(AssertionError, match="unsupported"):
        render(tmp_path)


def test_every_builtin_object_validates_against_the_kubernetes_schema(objs: list[Obj]) -> None:
    builtin = [o for o in objs if o["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert len(builtin) > 20
    errors = []
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{_key(obj)}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


def test_expected_objects_are_there(objs: list[Obj]) -> None:
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
    } | STRIMZI_KINDS <= kinds
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"} == {WORKER, "triton", "redis"}
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] not in CLUSTER_SCOPED}
    assert namespaces == {_one(objs, "Namespace")["metadata"]["name"]}


def test_strimzi_resources_have_the_expected_shape(objs: list[Obj]) -> None:
    """No schema for Strimzi's CRDs here: check shape and references by hand."""
    strimzi = [o for o in objs if o["apiVersion"].split("/")[0] in CRD_GROUPS]
    for obj in strimzi:
        assert obj["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert obj["kind"] in STRIMZI_KINDS
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"])
        assert isinstance(obj["spec"], dict)
        assert obj["spec"]
    kafka = _one(objs, "Kafka")
    cluster = kafka["metadata"]["name"]
    for obj in strimzi:
        if obj["kind"] != "Kafka":
            assert obj["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    listeners = {lst["port"]: lst for lst in kafka["spec"]["kafka"]["listeners"]}
    assert set(listeners) == {9092, 9093}
    assert listeners[9093]["tls"] is True
    for lst in listeners.values():
        assert set(lst) <= {"name", "port", "type", "tls", "authentication", "networkPolicyPeers"}
        assert lst["type"] == "internal"
        assert lst["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert set(kafka["spec"]["entityOperator"]) == {"topicOperator", "userOperator"}

    pool = _one(objs, "KafkaNodePool")
    assert {"controller", "broker"} <= set(pool["spec"]["roles"])
    assert pool["spec"]["storage"]["type"] in {"jbod", "persistent-claim"}
    assert pool["spec"]["resources"]["limits"]["memory"]

    topic = _one(objs, "KafkaTopic")
    spec = topic["spec"]
    assert spec["topicName"] == "framegraph.events"
    assert spec["partitions"] >= 1
    assert spec["replicas"] >= 1
    assert spec["replicas"] <= pool["spec"]["replicas"]
    assert int(spec["config"]["retention.ms"]) > 0
    assert int(spec["config"]["min.insync.replicas"]) < spec["replicas"]

    user = _one(objs, "KafkaUser")
    auth = user["spec"]["authentication"]
    assert auth["type"] == "scram-sha-512"
    ref = auth["password"]["valueFrom"]["secretKeyRef"]
    secret = _one(objs, "Secret", ref["name"])  # no hash suffix: kustomize can't rewrite it in a CR
    values = _secret_values(secret)
    assert ref["key"] in values
    assert values["username"] == user["metadata"]["name"]  # the SCRAM user is the KafkaUser's name
    acls = user["spec"]["authorization"]["acls"]
    assert any(
        a["resource"]["type"] == "topic"
        and a["resource"]["name"] == spec["topicName"]
        and "Write" in a["operations"]
        for a in acls
    )


# --------------------------------------------------------------------------------------
# the workers
# --------------------------------------------------------------------------------------


def test_worker_runs_the_worker_command_with_its_environment(objs: list[Obj]) -> None:
    c = _container(objs, WORKER, "worker")
    assert c["command"] == [
        "framegraph",
        "worker",
        "/etc/framegraph/graph.yaml",
        "--api-address",
        "0.0.0.0",
        "--api-port",
        "8080",
    ]
    env = _env(c)
    kafka = _one(objs, "Kafka")["metadata"]["name"]
    assert env["FG_REDIS_URL"] == "redis://redis:6379/0"
    assert env["FG_KAFKA_BOOTSTRAP"] == f"{kafka}-kafka-bootstrap:9092"  # Strimzi's bootstrap Service
    assert env["FG_KAFKA_TOPIC"] == _one(objs, "KafkaTopic")["spec"]["topicName"]
    assert env["FG_TRITON_GRPC_URL"] == "triton:8001"
    assert env["FG_API_TOKEN_FILE"] == "/var/run/secrets/framegraph/api-token"
    # the Services those URLs name exist and expose those ports
    for svc, port in (("redis", 6379), ("triton", 8001)):
        assert port in {p["port"] for p in _one(objs, "Service", svc)["spec"]["ports"]}


def test_worker_mounts_graph_token_tmp_and_spool(objs: list[Obj]) -> None:
    pod = _one(objs, "Deployment", WORKER)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(objs, WORKER, "worker")["volumeMounts"]}
    for path in ("/tmp", "/var/spool/framegraph"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
        assert not mounts[path].get("readOnly")
    graph_cm = volumes[mounts["/etc/framegraph"]["name"]]["configMap"]["name"]
    graph = _one(objs, "ConfigMap", graph_cm)
    assert graph["data"]["graph.yaml"] == (ROOT / "graphs/face_detect.yaml").read_text()
    token_dir, _, token_key = _env(_container(objs, WORKER, "worker"))["FG_API_TOKEN_FILE"].rpartition("/")
    secret = _one(objs, "Secret", volumes[mounts[token_dir]["name"]]["secret"]["secretName"])
    assert token_key in secret["data"]
    assert mounts[token_dir]["readOnly"] is True


def test_graph_copy_in_k8s_matches_the_repository_graph() -> None:
    assert (K8S / "base/graph/graph.yaml").read_bytes() == (ROOT / "graphs/face_detect.yaml").read_bytes(), (
        "k8s/base/graph/graph.yaml drifted from graphs/face_detect.yaml: copy it again"
    )


def test_worker_probes_service_and_scrape_annotations(objs: list[Obj]) -> None:
    deploy = _one(objs, "Deployment", WORKER)
    c = _container(objs, WORKER, "worker")
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(c, get["port"]) == 8080, probe
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    svc = _one(objs, "Service", WORKER)
    assert _selects(
        {"matchLabels": svc["spec"]["selector"]}, deploy["spec"]["template"]["metadata"]["labels"]
    )
    assert [(p["port"], _port_number(c, p["targetPort"])) for p in svc["spec"]["ports"]] == [(8080, 8080)]
    sa = _one(objs, "ServiceAccount", WORKER)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_pdb_and_hpa_target_the_workers(objs: list[Obj]) -> None:
    deploy = _one(objs, "Deployment", WORKER)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    pdb = _one(objs, "PodDisruptionBudget", WORKER)
    assert _selects(pdb["spec"]["selector"], labels)
    hpa = _one(objs, "HorizontalPodAutoscaler", WORKER)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER}
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    metrics = hpa["spec"]["metrics"]
    pods = {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"}
    assert pods == {"framegraph_streams_active", "framegraph_latency_p95_ms"}
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics), "CPU fallback"


def test_prometheus_adapter_rules_serve_the_hpa_metrics() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter/values.yaml").read_text())
    rules = {r["name"]["as"]: r for r in values["rules"]["custom"]}
    hpa = yaml.safe_load((K8S / "base/worker/hpa.yaml").read_text())
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted <= set(rules)
    assert rules["framegraph_streams_active"]["seriesQuery"].startswith("framegraph_streams_active{")
    latency = rules["framegraph_latency_p95_ms"]
    assert latency["seriesQuery"].startswith("framegraph_latency_ms{")
    assert 'quantile="p95"' in latency["seriesQuery"]
    assert 'quantile="p95"' in latency["metricsQuery"]
    for rule in rules.values():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }


# --------------------------------------------------------------------------------------
# every pod: resources, non-root, read-only root
# --------------------------------------------------------------------------------------


def test_every_container_has_resources_and_runs_as_non_root_read_only(objs: list[Obj]) -> None:
    seen = 0
    for obj in objs:
        for pod in _pod_specs(obj):
            psc = pod.get("securityContext", {})
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", _key(obj)
            assert pod.get("automountServiceAccountToken") is False, _key(obj)
            for c in _containers(pod):
                where = f"{_key(obj)} container {c['name']}"
                seen += 1
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: resources.{part}"
                sc = c.get("securityContext", {})
                assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
                uid = sc.get("runAsUser", psc.get("runAsUser"))
                assert isinstance(uid, int), f"{where}: an explicit uid"
                assert uid > 0, f"{where}: a non-root uid"
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
                assert not sc.get("privileged"), where
                assert re.fullmatch(r"[a-z0-9.-]+\.[a-z]+(:\d+)?/[\w./-]+:[\w.-]+", c["image"]), (
                    f"{where}: image {c['image']!r} is not a registry/name:tag"
                )
    assert seen >= 4


def test_references_between_objects_resolve(objs: list[Obj]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for obj in objs:
        for pod in _pod_specs(obj):
            for vol in pod.get("volumes", []):
                if "configMap" in vol:
                    assert ("ConfigMap", vol["configMap"]["name"]) in names, vol
                if "secret" in vol:
                    assert ("Secret", vol["secret"]["secretName"]) in names, vol
                assert "hostPath" not in vol, vol
            vol_names = {v["name"] for v in pod.get("volumes", [])}
            for c in _containers(pod):
                assert {m["name"] for m in c.get("volumeMounts", [])} <= vol_names, c["name"]
                for e in c.get("env", []):
                    for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        if ref in e.get("valueFrom", {}):
                            assert (kind, e["valueFrom"][ref]["name"]) in names, e
    pod_labels = _pod_labels(objs)
    for svc in (o for o in objs if o["kind"] == "Service"):
        assert any(_selects({"matchLabels": svc["spec"]["selector"]}, lab) for lab in pod_labels), _key(svc)


# --------------------------------------------------------------------------------------
# Triton, per overlay
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# secrets, network policies, dashboard
# --------------------------------------------------------------------------------------


def test_secrets_hold_placeholders_only(objs: list[Obj]) -> None:
    secrets = [o for o in objs if o["kind"] == "Secret"]
    assert len(secrets) >= 2
    for secret in secrets:
        for key, value in _secret_values(secret).items():
            if key == "username":  # a name, not a secret (it is the KafkaUser's name)
                assert re.fullmatch(r"[a-z0-9-]+", value)
                continue
            assert value.startswith("REPLACE_ME"), (
                f"Secret {secret['metadata']['name']}.{key} is not a placeholder"
            )


def _policies_for(objs: list[Obj], labels: dict[str, str], kind: str) -> list[Obj]:
    rules: list[Obj] = []
    for np in (o for o in objs if o["kind"] == "NetworkPolicy"):
        if kind in np["spec"].get("policyTypes", []) and _selects(np["spec"]["podSelector"], labels):
            rules += np["spec"].get(kind.lower(), [])
    return rules


def _ports(rules: list[Obj]) -> set[int]:
    return {p["port"] for r in rules for p in r.get("ports", [])}


def test_network_policies_default_deny_and_allow_only_the_needed_flows(objs: list[Obj]) -> None:
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1, "a default-deny policy for ingress and egress"

    worker = _one(objs, "Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    egress = _policies_for(objs, worker, "Egress")
    assert {53, 8001, 6379, 9092, 9093, 554, 8554} <= _ports(egress)
    assert all(r.get("ports") for r in egress), "every worker egress rule names its ports"

    def peers(port: int) -> list[Obj]:
        return [peer for r in egress if port in _ports([r]) for peer in r["to"]]

    triton = _one(objs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    redis = _one(objs, "Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    assert any(_selects(p.get("podSelector", {"x": 1}), triton) for p in peers(8001))
    assert any(_selects(p.get("podSelector", {"x": 1}), redis) for p in peers(6379))
    kafka = _one(objs, "Kafka")["metadata"]["name"]
    assert all(p["podSelector"]["matchLabels"]["strimzi.io/cluster"] == kafka for p in peers(9092))
    for peer in peers(554):
        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])  # a valid, configurable CIDR
        assert net.prefixlen > 0, "cameras: not the whole internet"

    ingress = _policies_for(objs, worker, "Ingress")
    assert _ports(ingress) == {8080}
    assert all(
        "namespaceSelector" in p and "podSelector" in p for r in ingress for p in r["from"]
    )  # Prometheus
    assert _ports(_policies_for(objs, triton, "Ingress")) >= {8001}
    assert _ports(_policies_for(objs, redis, "Ingress")) == {6379}
    redis_from = [p for r in _policies_for(objs, redis, "Ingress") for p in r["from"]]
    assert all(_selects(p["podSelector"], worker) for p in redis_from)
    for listener in _one(objs, "Kafka")["spec"]["kafka"]["listeners"]:
        assert any(_selects(p["podSelector"], worker) for p in listener["networkPolicyPeers"])


def test_grafana_dashboard_configmap_covers_the_metrics(objs: list[Obj]) -> None:
    cm = _generated(objs, "ConfigMap", "framegraph-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["name"] == "framegraph-grafana-dashboard", "no hash suffix (sidecar leftovers)"
    (text,) = cm["data"].values()
    dash = json.loads(text)
    assert dash["uid"]
    assert dash["title"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used: set[str] = set()
    for expr in exprs:
        metrics = set(re.findall(r"\bframegraph_\w+", expr))
        assert metrics <= set(ALL_METRICS), f"unknown metric in {expr}"
        used |= metrics
        labels = set().union(*(ALL_METRICS[m] for m in metrics)) | SCRAPE_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, f"{group} not labels of {metrics}"
        for label in re.findall(r"(\w+)=~?\"", expr):
            assert label in labels, f"{label} not a label of {metrics}"
    assert set(DASHBOARD_METRICS) <= used
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
