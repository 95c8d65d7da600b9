"""The framegraph workers in k8s/: command, environment, mounts, probes, service, scraping,
disruption budget and autoscaling."""

from __future__ import annotations

import yaml

from tests.unit.k8s.manifests import (
    K8S,
    ROOT,
    WORKER,
    Obj,
    _container,
    _env,
    _one,
    _port_number,
    _selects,
)


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
