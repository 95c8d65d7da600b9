"""Whole-graph validation: turns a parsed graph file into a runnable plan, or every error."""

from __future__ import annotations

import copy
import difflib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine import device as devices
from engine import yamlsource
from engine.config_issues import issues_of
from engine.cycles import find_cycles, kahn
from engine.errors import ConfigIssue, FramegraphError, GraphConfigError
from engine.kinds import KindNode, check_kinds
from engine.registry import Operator, Source, known_names, resolve
from engine.spec import (
    GraphSpec,
    NodeSpec,
    QueueSpec,
    SourceSpec,
    op_for_url,
    unencoded_credentials,
    unknown_scheme,
)
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
    """Validate everything before anything starts; raise one error listing every issue.

    Checks that do not depend on each other all run: a graph with a bad `queue.size` and a bad
    `config.width` gets both, even though the first leaves no typed graph to build."""
    try:
        spec = GraphSpec.model_validate(doc.data)
    except ValidationError as e:
        found = [_misplaced_config_field(doc, i) for i in issues_of(doc, (), e, GraphSpec)]
        repaired = _without_invalid_settings(doc)
        if repaired is None:
            _raw_checks(doc, found)
            raise GraphConfigError(_in_file_order(doc, found)) from e
        try:  # every other check, on the graph less the settings just reported
            build_plan(repaired[0])
        except GraphConfigError as more:
            seen = {(i.field, i.reason) for i in found}
            dropped = repaired[1]  # what the removal itself causes (a config now empty) is no news
            found += [
                i
                for i in more.issues
                if (i.field, i.reason) not in seen and not any(_under(i.field, d) for d in dropped)
            ]
        raise GraphConfigError(_in_file_order(doc, found)) from e
    issues: list[ConfigIssue] = []
    try:
        device, reason = devices.choose_device(spec.device)
    except FramegraphError as e:
        issues.append(doc.issue(("device",), str(e)))
        device, reason = "cpu", ""
    unique = _check_ids(doc, [s.id for s in spec.sources], [n.id for n in spec.nodes], issues)
    sources = [sp for i, s in enumerate(spec.sources) if (sp := _source_plan(doc, ("sources", i), s, issues))]
    nodes = [np_ for i, n in enumerate(spec.nodes) if (np_ := _node_plan(doc, i, n, device, issues))]
    edges = _edges(doc, spec, issues)
    order: list[str] = []
    if unique:  # duplicate ids make edges ambiguous: their error is the only one about them
        order = _topological(doc, spec, edges, issues)
        if order:
            _check_kinds(doc, spec, sources, nodes, edges, order, device, issues)
        elif spec.nodes:  # a cycle: check the kinds along what is not on it
            kept, partial, _ = without_cycles(spec, edges)
            _check_kinds(doc, spec, sources, nodes, kept, partial, device, issues)
    _check_output_files(doc, spec, nodes, issues)
    if issues:
        raise GraphConfigError(_in_file_order(doc, issues))
    by_id = {n.spec.id: n for n in nodes}
    return GraphPlan(spec, sources, [by_id[i] for i in order], edges, doc.name, device, reason)


def _misplaced_config_field(doc: SourcedDoc, issue: ConfigIssue) -> ConfigIssue:
    """'nodes.1.width: unknown field' where `width` is a field of the node's operator's config
    (its lines not indented under `config:`): say so."""
    parts = issue.field.split(".")
    if issue.reason != "unknown field" or len(parts) != 3 or parts[0] not in ("nodes", "sources"):
        return issue
    items = doc.data.get(parts[0]) if isinstance(doc.data, dict) else None
    index = int(parts[1]) if parts[1].isdigit() else -1
    raw = items[index] if isinstance(items, list) and 0 <= index < len(items) else None
    if not isinstance(raw, dict):
        return issue
    op = raw.get("op") or (op_for_url(raw["url"]) if isinstance(raw.get("url"), str) else None)
    try:
        name = devices.resolve_alias(op, "cpu") if isinstance(op, str) else None
    except FramegraphError:
        name = op
    cls = _quiet_class(name) if isinstance(name, str) else None
    if cls is None or parts[2] not in getattr(cls, "Config", BaseModel).model_fields:
        return issue
    why = f"unknown field; it is a field of {name}'s config: indent it under 'config:'"
    return replace(issue, reason=why)


def _under(field: str, prefix: str) -> bool:
    return field == prefix or field.startswith(prefix + ".")


def _without_invalid_settings(doc: SourcedDoc) -> tuple[SourcedDoc, list[str]] | None:
    """The document less each optional setting the graph schema refused (a bad `queue`, `batch`,
    `workers`, `tracing`, ...), so that the checks after it still run; None where a refusal is
    not such a setting (a node that is not a mapping, a missing id): nothing sound to check then."""
    data = copy.deepcopy(doc.data)
    dropped: list[str] = []
    for _ in range(8):
        try:
            GraphSpec.model_validate(data)
        except ValidationError as e:
            for error in e.errors():
                path = _drop_setting(data, error["loc"], error["type"])
                if path is None:
                    return None
                dropped.append(path)
            continue
        return SourcedDoc(data=data, origins=doc.origins, name=doc.name, from_env=doc.from_env), dropped
    return None


def _drop_setting(data: Any, loc: tuple[Any, ...], kind: str) -> str | None:
    """Delete the deepest mapping key on `loc` that holds the refused value (`queue.size`, then
    `queue`, ...): never an id, op, url, inputs or a list item. The dotted path deleted; None when
    there is none."""
    if kind == "missing":
        return None
    path = [p for p in loc if isinstance(p, (str, int))]
    for cut in range(len(path), 0, -1):
        *parents, key = path[:cut]
        holder: Any = data
        for p in parents:
            holder = _child(holder, p)
        if isinstance(holder, dict) and isinstance(key, str) and key in holder:
            if key in ("id", "op", "url", "inputs", "nodes", "sources", "name", "from"):
                return None
            del holder[key]
            return ".".join(str(p) for p in path[:cut])
    return None


def _child(holder: Any, key: str | int) -> Any:
    """holder[key] for a mapping key or a list index that exists; else None."""
    if isinstance(holder, dict):
        return holder.get(key)
    if isinstance(holder, list) and isinstance(key, int) and 0 <= key < len(holder):
        return holder[key]
    return None


def _in_file_order(doc: SourcedDoc, issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Issues by line of the graph file; those from --set (or without a line) first."""
    prefix = f"{doc.name}:"

    def line(issue: ConfigIssue) -> int:
        rest = issue.origin[len(prefix) :] if issue.origin.startswith(prefix) else ""
        return int(rest) if rest.isdigit() else 0

    return sorted(issues, key=line)


def _raw_checks(doc: SourcedDoc, issues: list[ConfigIssue]) -> None:
    """What can still be checked when the graph as a whole did not validate: operator names and
    configs, duplicate ids and inputs, on each source and node that is a mapping."""
    data = doc.data if isinstance(doc.data, dict) else {}
    raw_sources = [s if isinstance(s, dict) else {} for s in _list(data.get("sources"))]
    raw_nodes = [n if isinstance(n, dict) else {} for n in _list(data.get("nodes"))]
    device = "cpu"
    if data.get("device", "auto") in ("auto", "cpu", "cuda"):
        try:
            device = devices.choose_device(data.get("device", "auto"))[0]
        except FramegraphError as e:
            issues.append(doc.issue(("device",), str(e)))
    for i, s in enumerate(raw_sources):
        url, op, config = s.get("url"), s.get("op"), s.get("config", {})
        if isinstance(url, str) and (op is None or isinstance(op, str)) and isinstance(config, dict):
            _source_checks(doc, ("sources", i), url, op, config, issues)
    for i, n in enumerate(raw_nodes):
        op, config = n.get("op"), n.get("config", {})
        if isinstance(op, str) and isinstance(config, dict):
            _node_checks(doc, i, op, "batch" in n and n["batch"] is not None, config, device, issues)
    source_ids = [s.get("id") for s in raw_sources]
    node_ids = [n.get("id") for n in raw_nodes]
    if _check_ids(doc, source_ids, node_ids, issues):
        known = [i for i in [*source_ids, *node_ids] if isinstance(i, str)]
        for i, n in enumerate(raw_nodes):
            for j, item in enumerate(_list(n.get("inputs"))):
                src = item.get("from") if isinstance(item, dict) else item
                if isinstance(src, str):
                    _check_input(doc, ("nodes", i, "inputs", j), src, known, issues)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _check_ids(
    doc: SourcedDoc, source_ids: list[Any], node_ids: list[Any], issues: list[ConfigIssue]
) -> bool:
    """Reserved and duplicate ids; True when every id is unique."""
    seen: dict[str, str] = {}
    unique = True
    entries = [("sources", i, s) for i, s in enumerate(source_ids)]
    entries += [("nodes", i, n) for i, n in enumerate(node_ids)]
    for section, index, ident in entries:
        path: PathKey = (section, index, "id")
        if not isinstance(ident, str):
            continue
        if ident == ALL_SOURCES:
            issues.append(doc.issue(path, f"'{ALL_SOURCES}' is reserved (it names every source)"))
        elif ident in seen:
            unique = False
            issues.append(doc.issue(path, f"duplicate id {ident!r} (first used at {seen[ident]})"))
        else:
            seen[ident] = dotted_origin(doc, path)
    return unique


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
    doc: SourcedDoc,
    path: PathKey,
    cls: Any,
    raw: dict[str, Any],
    issues: list[ConfigIssue],
    elsewhere: dict[str, type[BaseModel]] | None = None,
    owner: str = "",
) -> BaseModel | None:
    try:
        config: BaseModel = cls.Config.model_validate(raw)
    except ValidationError as e:
        issues.extend(issues_of(doc, path, e, cls.Config, elsewhere, owner))
        return None
    return config


def _other_source_configs(name: str) -> dict[str, type[BaseModel]]:
    """The configs of the source operators other than `name`: an unknown field may be theirs."""
    out: dict[str, type[BaseModel]] = {}
    for other in known_names():
        if other == name or not other.startswith("source."):
            continue
        try:
            cls = resolve(other)
        except (KeyError, ImportError):
            continue
        if isinstance(cls, type) and issubclass(cls, Source):
            out[other] = cls.Config
    return out


def _source_checks(
    doc: SourcedDoc, prefix: PathKey, url: str, op: str | None, raw: dict[str, Any], issues: list[ConfigIssue]
) -> tuple[Any, BaseModel | None]:
    """The source's URL, operator and config: (class, typed config), None where they fail."""
    name = op or op_for_url(url)
    if name in ("source.file", "source.rtsp") and (why := unknown_scheme(url)) is not None:
        issues.append(doc.issue((*prefix, "url"), why))
    if (why := unencoded_credentials(url)) is not None:
        issues.append(doc.issue((*prefix, "url"), why))
    cls = _lookup(doc, (*prefix, "op"), name, issues)
    if cls is None:
        return None, None
    if not issubclass(cls, Source):
        issues.append(doc.issue((*prefix, "op"), f"{name!r} is not a source operator"))
        return None, None
    elsewhere = _other_source_configs(name)
    return cls, _typed_config(doc, (*prefix, "config"), cls, raw, issues, elsewhere, name)


def _source_plan(
    doc: SourcedDoc, prefix: PathKey, spec: SourceSpec, issues: list[ConfigIssue]
) -> SourcePlan | None:
    cls, config = _source_checks(doc, prefix, spec.url, spec.op, spec.config, issues)
    return SourcePlan(spec, cls, config) if config is not None else None


def source_plan(data: Any, origin: str = "request") -> SourcePlan:
    """Validate one stream given at run time (control API, Redis registry): fields as in a graph."""
    doc = SourcedDoc(data=data, name=origin)
    try:
        spec = SourceSpec.model_validate(data)
    except ValidationError as e:
        raise GraphConfigError(issues_of(doc, (), e, SourceSpec)) from e
    issues: list[ConfigIssue] = []
    if spec.id == ALL_SOURCES:
        issues.append(doc.issue(("id",), f"'{ALL_SOURCES}' is reserved (it names every source)"))
    plan = _source_plan(doc, (), spec, issues)
    if issues or plan is None:
        raise GraphConfigError(issues)
    return plan


def _node_checks(
    doc: SourcedDoc,
    index: int,
    op: str,
    batched: bool,
    raw: dict[str, Any],
    device: str,
    issues: list[ConfigIssue],
) -> tuple[str, Any, BaseModel | None]:
    """The node's operator and config: (operator name, class, typed config), None where they fail.
    `op: decode` / `op: preprocess` are device aliases: the graph's device picks the operator."""
    try:
        name = devices.resolve_alias(op, device)
    except FramegraphError as e:
        issues.append(doc.issue(("nodes", index, "op"), str(e)))
        return op, None, None
    cls = _lookup(doc, ("nodes", index, "op"), name, issues)
    if cls is None:
        return name, None, None
    if not issubclass(cls, Operator):
        issues.append(doc.issue(("nodes", index, "op"), f"{op!r} is a source, not a node"))
        return name, None, None
    if batched and not cls.batching and name == op:  # an alias: the GPU operator it may pick batches
        reason = f"operator {name!r} does not batch; remove 'batch'"
        issues.append(doc.issue(("nodes", index, "batch"), reason))
    return name, cls, _typed_config(doc, ("nodes", index, "config"), cls, raw, issues)


def _node_plan(
    doc: SourcedDoc, index: int, spec: NodeSpec, device: str, issues: list[ConfigIssue]
) -> NodePlan | None:
    name, cls, config = _node_checks(doc, index, spec.op, spec.batch is not None, spec.config, device, issues)
    return NodePlan(spec, cls, config, name) if config is not None else None


def _check_input(
    doc: SourcedDoc, path: PathKey, src: str, known: list[str], issues: list[ConfigIssue]
) -> bool:
    """Whether an input names a node, a source or 'sources'; an issue with a hint if not."""
    if src == ALL_SOURCES or src in known:
        return True
    close = difflib.get_close_matches(src, [ALL_SOURCES, *known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    issues.append(doc.issue(path, f"input {src!r} is not a node or source{hint}"))
    return False


def _edges(doc: SourcedDoc, spec: GraphSpec, issues: list[ConfigIssue]) -> list[Edge]:
    source_ids = [s.id for s in spec.sources]
    known = [*source_ids, *sorted({n.id for n in spec.nodes})]
    edges: list[Edge] = []
    before = len(issues)
    for index, node in enumerate(spec.nodes):
        fed: dict[str, str] = {}  # source or node id -> the input that named it
        for j, (src, queue) in enumerate(node.edges()):
            if not _check_input(doc, ("nodes", index, "inputs", j), src, known, issues):
                continue
            srcs = source_ids if src == ALL_SOURCES else [src]
            twice = [s for s in srcs if s in fed]
            if twice:
                earlier = fed[twice[0]]
                why = f"'{ALL_SOURCES}' includes it" if earlier == ALL_SOURCES else "it is named already"
                issues.append(
                    doc.issue(
                        ("nodes", index, "inputs", j),
                        f"input {twice[0]!r} is given twice ({why}): every item would arrive twice",
                    )
                )
                continue
            fed.update(dict.fromkeys(srcs, src))
            edges.extend(Edge(s, node.id, queue) for s in srcs)
    read = {e.src for e in edges}
    for i, sid in enumerate(source_ids):
        if sid not in read and len(issues) == before:  # a misspelt input may have meant it
            issues.append(
                doc.issue(
                    ("sources", i, "id"),
                    f"source {sid!r} is read by no node: name it (or '{ALL_SOURCES}') in a node's "
                    "inputs, or remove it",
                )
            )
    return edges


def _topological(doc: SourcedDoc, spec: GraphSpec, edges: list[Edge], issues: list[ConfigIssue]) -> list[str]:
    """Node ids in topological order (ties in file order); [] after a cycle, each cycle reported."""
    node_ids = [n.id for n in spec.nodes]
    downstream: dict[str, list[str]] = {n: [] for n in node_ids}
    for e in edges:
        if e.src in downstream and e.dst not in downstream[e.src]:
            downstream[e.src].append(e.dst)
    cycles = find_cycles(node_ids, downstream)
    if cycles:
        for cycle in without_cycles(spec, edges)[2]:
            reason = f"cycle {' -> '.join(cycle)}: a graph must be acyclic"
            issues.append(doc.issue(("nodes", node_ids.index(cycle[0]), "inputs"), reason))
        return []
    order = kahn(node_ids, downstream)
    if not any(e.src in {s.id for s in spec.sources} for e in edges) and not issues:
        issues.append(doc.issue(("nodes",), "no node reads from a source"))
    return order


def without_cycles(spec: GraphSpec, edges: list[Edge]) -> tuple[list[Edge], list[str], list[list[str]]]:
    """The edges less those on a cycle, the node order they give (what the kind check can still
    follow in a graph whose cycles were reported: a node on one sees its other inputs), and every
    cycle cut, each as its path (knots of several cycles give each of them)."""
    node_ids = [n.id for n in spec.nodes]
    downstream: dict[str, list[str]] = {n: [] for n in node_ids}
    for e in edges:
        if e.src in downstream and e.dst not in downstream[e.src]:
            downstream[e.src].append(e.dst)
    kept = list(edges)
    cycles: list[list[str]] = []
    for _ in range(len(edges) + 1):  # find_cycles names one cycle per knot: cut until none is left
        acyclic: dict[str, list[str]] = {n: [] for n in node_ids}
        for e in kept:
            if e.src in acyclic and e.dst not in acyclic[e.src]:
                acyclic[e.src].append(e.dst)
        found = find_cycles(node_ids, acyclic)
        if not found:
            break
        cycles += found
        on_cycle = [list(itertools.pairwise(c)) for c in found]  # the cycle's own edges
        kept = [e for e in kept if not any((e.src, e.dst) in hops for hops in on_cycle)]
    order = kahn(node_ids, acyclic)
    placed = set(order)
    return [e for e in kept if e.dst in placed and (e.src in placed or e.src not in acyclic)], order, cycles


def _output_file(node: NodePlan) -> str | None:
    """The file name pattern a file-writing sink writes under --output (None: not such a sink)."""
    cfg = node.config
    if node.op == "sink.jsonl":
        return str(getattr(cfg, "path"))  # noqa: B009
    if node.op == "sink.file":
        path = str(getattr(cfg, "path"))  # noqa: B009
        return path or ("{stream}_{segment:04d}.mp4" if getattr(cfg, "segment_s", 0) else "{stream}.mp4")
    return None


def _check_output_files(
    doc: SourcedDoc, spec: GraphSpec, nodes: list[NodePlan], issues: list[ConfigIssue]
) -> None:
    """Two sinks never write the same file: every event would be there twice (under two event
    ids, so consumers count it twice), and two encoders would write one MP4 at once."""
    index = {n.id: i for i, n in enumerate(spec.nodes)}
    first: dict[str, str] = {}
    for node in nodes:
        path = _output_file(node)
        if path is None:
            continue
        if path in first:
            issues.append(
                doc.issue(
                    ("nodes", index[node.spec.id], "config", "path"),
                    f"node {node.spec.id} would write the same file as node {first[path]} ('{path}'): "
                    "give one of them another `path`",
                )
            )
        else:
            first[path] = node.spec.id


def _check_kinds(
    doc: SourcedDoc,
    spec: GraphSpec,
    sources: list[SourcePlan],
    nodes: list[NodePlan],
    edges: list[Edge],
    order: list[str],
    device: str,
    issues: list[ConfigIssue],
) -> None:
    """Each node is fed what it takes (engine/kinds.py): packets or frames, and what frames carry.

    A node or source whose config failed is still checked, from the fields that did validate: a
    misspelt field must not hide a wrong input on the same node."""
    source_cls = {sp.spec.id: sp.cls for sp in sources}
    by_source = {
        s.id: (s.resolved_op, source_cls.get(s.id) or _quiet_class(s.resolved_op)) for s in spec.sources
    }
    plans = {n.spec.id: n for n in nodes}
    specs = {n.id: (i, n) for i, n in enumerate(spec.nodes)}
    inputs: dict[str, list[str]] = {n: [] for n in order}
    for e in edges:
        inputs[e.dst].append(e.src)
    kind_nodes = []
    for nid in order:
        plan = plans.get(nid)
        if plan is not None:
            kind_nodes.append(KindNode(nid, plan.op, plan.cls, plan.config, inputs[nid]))
            continue
        node = specs[nid][1]
        try:
            op = devices.resolve_alias(node.op, device)
        except FramegraphError:
            op = node.op
        cls = _quiet_class(op)
        config = _lenient_config(cls, node.config) if cls is not None else None
        kind_nodes.append(KindNode(nid, op, cls if config is not None else None, config, inputs[nid]))
    for nid, reason in check_kinds(by_source, kind_nodes).items():
        issues.append(doc.issue(("nodes", specs[nid][0], "inputs"), reason))


def _quiet_class(name: str) -> Any:
    """The operator class registered as `name`, or None (its error is reported elsewhere)."""
    try:
        return resolve(name)
    except (KeyError, ImportError):
        return None


def _lenient_config(cls: Any, raw: dict[str, Any]) -> BaseModel | None:
    """`raw` with its unknown fields left out, typed; None if what remains does not validate."""
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        return None
    known = {k: v for k, v in raw.items() if k in config_cls.model_fields}
    try:
        config: BaseModel = config_cls.model_validate(known)
    except ValidationError:
        return None
    return config
