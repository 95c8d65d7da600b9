"""Every pod in k8s/ has resources and runs as non-root with a read-only root; references between
objects resolve; secrets hold placeholders; network policies deny by default; the Grafana
dashboard covers the metrics."""

from __future__ import annotations

import ipaddress
import json
import re

from tests.unit.k8s.manifests import (
    ALL_METRICS,
    DASHBOARD_METRICS,
    SCRAPE_LABELS,
    WORKER,
    Obj,
    _generated,
    _key,
    _one,
    _pod_labels,
    _secret_values,
    _selects,
)
from tests.unit.k8s_render import _containers, _pod_specs


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
