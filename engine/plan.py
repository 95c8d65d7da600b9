"""Whole-graph validation: turns a parsed graph file into a runnable plan, or every error."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine import device as devices
from engine import yamlsource
from engine.errors import ConfigIssue, FramegraphError, GraphConfigError
from engine.registry import Operator, Source, known_names, resolve
from engine.spec import GraphSpec, NodeSpec, QueueSpec, SourceSpec
from engine.yamlsource import PathKey, SourcedDoc

ALL_SOURCES = "sources"


@dataclass(frozen=True)
class Edge:
    """A bounded queue from `src` (node or source id) to node `dst`."""

    src: str
    dst: str
    queue: QueueSpec


@dataclass
class NodePlan:
    spec: NodeSpec
    cls: type[Operator[Any]]
    config: BaseModel
    op: str = ""  # the operator that runs: `spec.op`, or what a device alias resolved to


@dataclass
class SourcePlan:
    spec: SourceSpec
    cls: type[Source[Any]]
    config: BaseModel


@dataclass
class GraphPlan:
    """A validated graph: operators resolved, configs typed, nodes in topological order."""

    spec: GraphSpec
    sources: list[SourcePlan]
    nodes: list[NodePlan]  # topological order
    edges: list[Edge]
    origin: str
    device: str = "cpu"
    device_reason: str = ""


def load_plan(path: str | Path, overrides: list[str] | None = None) -> GraphPlan:
    """Load, override (`--set`), and validate a graph file."""
    doc = yamlsource.load_file(path)
    for assignment in overrides or []:
        yamlsource.apply_override(doc, assignment)
    return build_plan(doc)


def build_plan(doc: SourcedDoc) -> GraphPlan:
    """Validate everything before anything starts; raise one error listing every issue."""
    try:
        spec = GraphSpec.model_validate(doc.data)
    except ValidationError as e:
        raise GraphConfigError(_issues(doc, (), e)) from e
    issues: list[ConfigIssue] = []
    try:
        device, reason = devices.choose_device(spec.device)
    except FramegraphError as e:
        raise GraphConfigError([doc.issue(("device",), str(e))]) from e
    _check_ids(doc, spec, issues)
    sources = [sp for i, s in enumerate(spec.sources) if (sp := _source_plan(doc, ("sources", i), s, issues))]
    nodes = [np_ for i, n in enumerate(spec.nodes) if (np_ := _node_plan(doc, i, n, device, issues))]
    edges = _edges(doc, spec, issues)
    order = _topological(doc, spec, edges, issues)
    if issues:
        raise GraphConfigError(issues)
    by_id = {n.spec.id: n for n in nodes}
    return GraphPlan(spec, sources, [by_id[i] for i in order], edges, doc.name, device, reason)


def _issues(doc: SourcedDoc, prefix: PathKey, e: ValidationError) -> list[ConfigIssue]:
    out = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic names union members in loc ("str", "EdgeSpec"); they are not keys
        path = tuple(p for p in loc if p not in ("str", "EdgeSpec"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "field required"
        out.append(doc.issue((*prefix, *path), msg))
    return out


def _check_ids(doc: SourcedDoc, spec: GraphSpec, issues: list[ConfigIssue]) -> None:
    seen: dict[str, str] = {}
    entries = [("sources", i, s.id) for i, s in enumerate(spec.sources)]
    entries += [("nodes", i, n.id) for i, n in enumerate(spec.nodes)]
    for section, index, ident in entries:
        path: PathKey = (section, index, "id")
        if ident == ALL_SOURCES:
            issues.append(doc.issue(path, f"'{ALL_SOURCES}' is reserved (it names every source)"))
        elif ident in seen:
            issues.append(doc.issue(path, f"duplicate id {ident!r} (first used at {seen[ident]})"))
        else:
            seen[ident] = dotted_origin(doc, path)


def dotted_origin(doc: SourcedDoc, path: PathKey) -> str:
    return f"{yamlsource.dotted(path)} ({doc.origin_of(path)})"


def _lookup(doc: SourcedDoc, path: PathKey, name: str, issues: list[ConfigIssue]) -> Any:
    try:
        return resolve(name)
    except KeyError:
        close = difflib.get_close_matches(name, known_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        issues.append(doc.issue(path, f"unknown operator {name!r}{hint}"))
    except ImportError as e:
        issues.append(doc.issue(path, f"operator {name!r} cannot be imported: {e}"))
    return None


def _typed_config(
    doc: SourcedDoc, path: PathKey, cls: Any, raw: dict[str, Any], issues: list[ConfigIssue]
) -> BaseModel | None:
    try:
        config: BaseModel = cls.Config.model_validate(raw)
    except ValidationError as e:
        issues.extend(_issues(doc, path, e))
        return None
    return config


def _source_plan(
    doc: SourcedDoc, prefix: PathKey, spec: SourceSpec, issues: list[ConfigIssue]
) -> SourcePlan | None:
    name = spec.resolved_op
    cls = _lookup(doc, (*prefix, "op"), name, issues)
    if cls is None:
        return None
    if not issubclass(cls, Source):
        issues.append(doc.issue((*prefix, "op"), f"{name!r} is not a source operator"))
        return None
    config = _typed_config(doc, (*prefix, "config"), cls, spec.config, issues)
    return SourcePlan(spec, cls, config) if config is not None else None


def source_plan(data: Any, origin: str = "request") -> SourcePlan:
    """Validate one stream given at run time (control API, Redis registry): fields as in a graph."""
    doc = SourcedDoc(data=data, name=origin)
    try:
        spec = SourceSpec.model_validate(data)
    except ValidationError as e:
        raise GraphConfigError(_issues(doc, (), e)) from e
    issues: list[ConfigIssue] = []
    if spec.id == ALL_SOURCES:
        issues.append(doc.issue(("id",), f"'{ALL_SOURCES}' is reserved (it names every source)"))
    plan = _source_plan(doc, (), spec, issues)
    if issues or plan is None:
        raise GraphConfigError(issues)
    return plan


def _node_plan(
    doc: SourcedDoc, index: int, spec: NodeSpec, device: str, issues: list[ConfigIssue]
) -> NodePlan | None:
    """`op: decode` / `op: preprocess` are device aliases: the graph's device picks the operator."""
    try:
        name = devices.resolve_alias(spec.op, device)
    except FramegraphError as e:
        issues.append(doc.issue(("nodes", index, "op"), str(e)))
        return None
    cls = _lookup(doc, ("nodes", index, "op"), name, issues)
    if cls is None:
        return None
    if not issubclass(cls, Operator):
        issues.append(doc.issue(("nodes", index, "op"), f"{spec.op!r} is a source, not a node"))
        return None
    if spec.batch is not None and not cls.batching:
        reason = f"operator {name!r} does not batch; remove 'batch'"
        issues.append(doc.issue(("nodes", index, "batch"), reason))
    config = _typed_config(doc, ("nodes", index, "config"), cls, spec.config, issues)
    return NodePlan(spec, cls, config, name) if config is not None else None


def _edges(doc: SourcedDoc, spec: GraphSpec, issues: list[ConfigIssue]) -> list[Edge]:
    source_ids = [s.id for s in spec.sources]
    node_ids = {n.id for n in spec.nodes}
    edges: list[Edge] = []
    for index, node in enumerate(spec.nodes):
        for j, (src, queue) in enumerate(node.edges()):
            path: PathKey = ("nodes", index, "inputs", j)
            if src == ALL_SOURCES:
                edges.extend(Edge(s, node.id, queue) for s in source_ids)
            elif src in node_ids or src in source_ids:
                edges.append(Edge(src, node.id, queue))
            else:
                known = [ALL_SOURCES, *source_ids, *sorted(node_ids)]
                close = difflib.get_close_matches(src, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                issues.append(doc.issue(path, f"input {src!r} is not a node or source{hint}"))
    return edges


def _topological(doc: SourcedDoc, spec: GraphSpec, edges: list[Edge], issues: list[ConfigIssue]) -> list[str]:
    node_ids = [n.id for n in spec.nodes]
    upstream: dict[str, set[str]] = {n: set() for n in node_ids}
    for e in edges:
        if e.src in upstream:
            upstream[e.dst].add(e.src)
    order: list[str] = []
    ready = [n for n in node_ids if not upstream[n]]
    while ready:
        current = ready.pop(0)
        order.append(current)
        for n in node_ids:
            if current in upstream[n]:
                upstream[n].discard(current)
                if not upstream[n] and n not in order and n not in ready:
                    ready.append(n)
    if len(order) < len(node_ids):
        cyclic = [n for n in node_ids if n not in order]
        index = node_ids.index(cyclic[0])
        reason = f"cycle among nodes {', '.join(cyclic)}: a graph must be acyclic"
        issues.append(doc.issue(("nodes", index, "inputs"), reason))
    fed_by_source = any(e.src in {s.id for s in spec.sources} for e in edges)
    if not fed_by_source and not issues:
        issues.append(doc.issue(("nodes",), "no node reads from a source"))
    return order
