"""The manifests render (as kubectl kustomize does), every built-in object validates against the
Kubernetes schema (strict), the expected objects are there, and Strimzi's resources have their
expected shape (no schema ships for them). Offline and fast."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest

from tests.unit.k8s.manifests import (
    CRD_GROUPS,
    K8S,
    K8S_VERSION,
    OVERLAYS,
    STRIMZI_KINDS,
    WORKER,
    Obj,
    _key,
    _kubectl_kustomize,
    _one,
    _secret_values,
)
from tests.unit.k8s_render import CLUSTER_SCOPED, render


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
