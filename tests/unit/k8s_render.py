"""A minimal kustomize for the subset k8s/ uses, so the manifest tests render offline.

`render(overlay)` builds resources, namespace, labels, images, patches (strategic merge and
JSON 6902) and configMapGenerator / secretGenerator with kustomize's own name hash, and refuses
any other kustomization field; `kubectl_kustomize(overlay)` uses kubectl when it is on PATH.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Obj = dict[str, Any]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}

# --------------------------------------------------------------------------------------
# A minimal kustomize (the subset k8s/ uses)
# --------------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "patches",
    "configMapGenerator",
    "secretGenerator",
}
GENERATOR_KEYS = {"name", "files", "literals", "options", "type"}
GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels", "annotations"}
# Strategic-merge keys of the lists the patches touch; any other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
NEEDS_HASH = "__needs_hash__"


def _kustomize_hash(obj: Obj) -> str:
    """kustomize's name suffix: sha256 of Go's json.Marshal of a few fields, 10 hex
    digits with 0/1/3/a/e mapped to g/h/k/m/t (sigs.k8s.io/kustomize/api/hasher). Its
    "name" is always "": kustomize looks it up as one field called "metadata/name"."""
    if obj["kind"] == "ConfigMap":
        doc: Obj = {"kind": "ConfigMap", "name": "", "data": obj.get("data", {})}
        if obj.get("binaryData"):
            doc["binaryData"] = obj["binaryData"]
    else:
        doc = {
            "kind": "Secret",
            "type": obj.get("type", ""),
            "name": "",
            "data": obj.get("data", {}),
        }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _generate(kind: str, gen: Obj, base: Path) -> Obj:
    assert set(gen) <= GENERATOR_KEYS, f"unsupported generator fields {set(gen) - GENERATOR_KEYS}"
    options = gen.get("options", {})
    assert set(options) <= GENERATOR_OPTIONS, f"unsupported generator options {options}"
    data: dict[str, str] = {}
    for item in gen.get("files", []):
        key, _, rel = item.rpartition("=")
        path = (base / rel).resolve()
        assert path.is_relative_to(base.resolve()), f"{item}: kustomize refuses files outside {base}"
        data[key or path.name] = path.read_text()
    for item in gen.get("literals", []):
        key, sep, value = item.partition("=")
        assert sep, f"unsupported literal {item!r}"
        assert not value.startswith(("'", '"')), f"unsupported (quoted) literal {item!r}"
        data[key] = value
    meta: Obj = {"name": gen["name"]}
    if options.get("labels"):
        meta["labels"] = dict(options["labels"])
    if options.get("annotations"):
        meta["annotations"] = dict(options["annotations"])
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    if not options.get("disableNameSuffixHash"):
        obj[NEEDS_HASH] = True
    return obj


def _smp(base: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge: maps merge, lists in MERGE_KEYS merge by their key, null deletes."""
    if isinstance(patch, dict):
        assert not any(k.startswith("$") for k in patch), f"unsupported patch directive in {patch}"
        out = dict(base) if isinstance(base, dict) else {}
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _smp(out.get(k), v, k)
        return out
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(base, list):
        # kustomize's order (kyaml merge2): the patch's items first, then the others.
        mk = MERGE_KEYS[key]
        old = {b[mk]: b for b in base}
        merged = [_smp(old.get(item[mk]), item) for item in patch]
        return merged + [b for b in base if b[mk] not in {item[mk] for item in patch}]
    return copy.deepcopy(patch)


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    want = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    want["namespace"] = obj["metadata"].get("namespace")
    assert set(target) <= set(want), f"unsupported patch target fields {target}"
    return all(want[k] == v for k, v in target.items())


def _apply_patch(objs: list[Obj], spec: Obj, base: Path) -> list[Obj]:
    assert set(spec) <= {"path", "target"}, f"unsupported patch {spec}"
    patch = yaml.safe_load((base / spec["path"]).read_text())
    if isinstance(patch, list):  # JSON 6902
        target = spec["target"]
        apply = functools.partial(jsonpatch.apply_patch, patch=patch)
    else:  # strategic merge, targeting its own kind and name unless told otherwise
        target = spec.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        apply = functools.partial(_smp, patch=patch)
    hits = [i for i, o in enumerate(objs) if _matches(o, target)]
    assert hits, f"patch {spec['path']} matches nothing"
    for i in hits:
        objs[i] = apply(objs[i])
    return objs


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in WORKLOAD_KINDS:
        yield obj["spec"]["template"]["spec"]


def _containers(pod: Obj) -> Iterator[Obj]:
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def _set_image(image: str, rule: Obj) -> str:
    name, tag = re.fullmatch(r"([^:@]+(?::\d+/[^:@]+)?)(.*)", image).groups()  # type: ignore[union-attr]
    if name != rule["name"]:
        return image
    if "newTag" in rule:
        tag = f":{rule['newTag']}"
    return rule.get("newName", name) + tag


def _rename_refs(pod: Obj, kind: str, renames: dict[str, str]) -> None:
    def fix(ref: Obj | None, field: str = "name") -> None:
        if ref and ref.get(field) in renames:
            ref[field] = renames[ref[field]]

    for vol in pod.get("volumes", []):
        if kind == "ConfigMap":
            fix(vol.get("configMap"))
        else:
            fix(vol.get("secret"), "secretName")
        for src in vol.get("projected", {}).get("sources", []):
            fix(src.get("configMap" if kind == "ConfigMap" else "secret"))
    for c in _containers(pod):
        for env in c.get("env", []):
            fix(env.get("valueFrom", {}).get("configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"))
        for env_from in c.get("envFrom", []):
            fix(env_from.get("configMapRef" if kind == "ConfigMap" else "secretRef"))


def _build(directory: Path) -> list[Obj]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= KUSTOMIZATION_KEYS, f"{directory}: unsupported fields {set(k) - KUSTOMIZATION_KEYS}"
    objs: list[Obj] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            objs += _build(path)
        else:
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    objs += [_generate("ConfigMap", g, directory) for g in k.get("configMapGenerator", [])]
    objs += [_generate("Secret", g, directory) for g in k.get("secretGenerator", [])]
    for spec in k.get("patches", []):
        objs = _apply_patch(objs, spec, directory)
    if ns := k.get("namespace"):
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = ns
    for rule in k.get("labels", []):
        assert set(rule) <= {"pairs", "includeSelectors", "includeTemplates"}, rule
        assert not rule.get("includeSelectors"), "includeSelectors is not implemented"
        for obj in objs:
            obj["metadata"].setdefault("labels", {}).update(rule["pairs"])
            if rule.get("includeTemplates") and obj["kind"] in WORKLOAD_KINDS:
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(rule["pairs"])
    for rule in k.get("images", []):
        for obj in objs:
            for pod in _pod_specs(obj):
                for c in _containers(pod):
                    c["image"] = _set_image(c["image"], rule)
    return objs


def render(overlay: Path) -> list[Obj]:
    """The minimal kustomize: build, then add the name hashes and rewrite the references."""
    objs = _build(overlay)
    for kind in ("ConfigMap", "Secret"):
        renames: dict[str, str] = {}
        for obj in objs:
            if obj["kind"] == kind and obj.pop(NEEDS_HASH, False):
                name = obj["metadata"]["name"]
                renames[name] = obj["metadata"]["name"] = f"{name}-{_kustomize_hash(obj)}"
        for obj in objs:
            for pod in _pod_specs(obj):
                _rename_refs(pod, kind, renames)
    return objs
