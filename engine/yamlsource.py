"""YAML loading that remembers where every value came from (file:line or --set)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigIssue, GraphConfigError

PathKey = tuple[str | int, ...]
_ENV_RE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")


def dotted(path: PathKey) -> str:
    """The `--set` spelling of a path: ('nodes', 2, 'config') -> 'nodes.2.config'."""
    return ".".join(str(p) for p in path)


@dataclass
class SourcedDoc:
    """A parsed YAML document plus the origin of each value, for precise error messages."""

    data: Any
    origins: dict[PathKey, str] = field(default_factory=dict)
    name: str = "<graph>"
    from_env: dict[PathKey, list[str]] = field(default_factory=dict)  # values made by ${env:VAR}

    def origin_of(self, path: PathKey) -> str:
        """Origin of the value at `path`, or of its nearest existing parent."""
        for cut in range(len(path), -1, -1):
            found = self.origins.get(tuple(path[:cut]))
            if found is not None:
                return found
        return self.name

    def issue(self, path: PathKey, reason: str) -> ConfigIssue:
        """A located issue; one whose origin is `--set` of this very path prints the path once."""
        origin = self.origin_of(path)
        env = self.from_env.get(tuple(path))
        if env:  # the value is the environment's: name where it came from (never the value)
            reason += f" (the value comes from {', '.join('${env:' + v + '}' for v in env)})"
        if origin.startswith("--set ") and self.origins.get(tuple(path)) == origin:
            return SetIssue(origin, dotted(path), reason)
        set_here = [
            o for p, o in self.origins.items() if o.startswith("--set ") and p[: len(path)] == tuple(path)
        ]
        if set_here and tuple(path) not in self.origins:  # a --set made this key (misspelt): say which
            return ConfigIssue(set_here[0], dotted(path), reason)
        return ConfigIssue(origin, dotted(path), reason)


@dataclass(frozen=True)
class SetIssue(ConfigIssue):
    """An issue in the value a `--set PATH=...` gave: its origin names the path already."""

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


def load_text(text: str, name: str) -> SourcedDoc:
    """Parse YAML text, rejecting duplicate keys, and interpolate `${env:VAR,default}`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        origin = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(e, "problem", None) or str(e)
        opened = syntax_context(e)
        reason = f"invalid YAML: {problem}" + (f" ({opened})" if opened else "")
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        if "${" in line and ("{" in line.split("${")[0] or "[" in line.split("${")[0]):
            reason += '; inside {...} or [...] quote a reference: "${env:NAME,default}"'
        raise GraphConfigError([ConfigIssue(origin, "", reason)]) from e
    if root is None:
        raise GraphConfigError([ConfigIssue(name, "", "the file is empty")])
    doc = SourcedDoc(data=None, name=name)
    issues: list[ConfigIssue] = []
    doc.data = _build(root, (), doc, issues)
    if issues:
        raise GraphConfigError(issues)
    return doc


_CONTEXT_RE = re.compile(r"^while (?:parsing|scanning|composing) an? (.+)$")
_OPENERS = ("flow sequence", "flow mapping", "quoted scalar", "double-quoted scalar", "single-quoted scalar")
_RENAMED = {  # PyYAML's terms a graph's author may not know
    "block collection": "list",
    "block mapping": "mapping",
    "block scalar": "block text (| or >)",
    "simple key": "key",
    "quoted scalar": "quoted string",
    "double-quoted scalar": "quoted string",
}


def syntax_context(e: yaml.YAMLError) -> str | None:
    """Where the construct a YAML syntax error is inside began, when the parser says so: 'the flow
    sequence opened on line 8' for an unclosed `[`, which the parser only notices lines later."""
    context, mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if not isinstance(context, str) or mark is None:
        return None
    found = _CONTEXT_RE.match(context)
    if found is None:  # e.g. 'while scanning for the next token': no construct to point at
        return None
    what = found.group(1)
    verb = "opened" if what in _OPENERS else "started"
    return f"the {_RENAMED.get(what, what)} {verb} on line {mark.line + 1}"


def load_file(path: str | Path) -> SourcedDoc:
    """Read and parse a graph file; a missing file is a GraphConfigError too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise GraphConfigError([ConfigIssue(str(p), "", f"cannot read file: {e.strerror}")]) from e
    return load_text(text, str(p))


def _build(node: yaml.Node, path: PathKey, doc: SourcedDoc, issues: list[ConfigIssue]) -> Any:
    doc.origins[path] = f"{doc.name}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, doc, path, issues)
            if not isinstance(key, str):
                issues.append(doc.issue(path, f"keys must be strings, got {key!r}"))
                continue
            if key in out:
                line = key_node.start_mark.line + 1
                issues.append(ConfigIssue(f"{doc.name}:{line}", dotted((*path, key)), "duplicate key"))
                continue
            out[key] = _build(value_node, (*path, key), doc, issues)
            doc.origins[(*path, key)] = f"{doc.name}:{key_node.start_mark.line + 1}"
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), doc, issues) for i, v in enumerate(node.value)]
    value = _scalar(node, doc, path, issues)
    if isinstance(value, str) and "${" in value:
        try:
            filled = interpolate(value)
            doc.from_env[path] = [m.group(1) for m in _ENV_RE.finditer(value)]
            return filled
        except KeyError as e:
            issues.append(doc.issue(path, f"environment variable {e.args[0]} is not set"))
        except ValueError as e:
            issues.append(doc.issue(path, str(e)))
    return value


def _scalar(node: yaml.Node, doc: SourcedDoc, path: PathKey, issues: list[ConfigIssue]) -> Any:
    """A plain YAML value; a tag safe YAML does not know (`!python/...`, `!foo`) is an issue."""
    if node.tag == "tag:yaml.org,2002:null":  # `key:` with nothing after it (an empty scalar
        return None  # does not serialize back into a document safe_load reads)
    try:
        return yaml.safe_load(yaml.serialize(node))
    except yaml.YAMLError as e:
        origin = f"{doc.name}:{node.start_mark.line + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        issues.append(ConfigIssue(origin, dotted(path), f"unsupported YAML value ({node.tag}): {problem}"))
        return None


def interpolate(value: str) -> str:
    """Replace `${env:VAR}` and `${env:VAR,default}`; KeyError names a missing VAR, ValueError
    says why a `${env:` is not one (unclosed, or not a variable name)."""
    if "${env:" in _ENV_RE.sub("", value):
        raise ValueError(
            "unclosed or malformed '${env:...}': write ${env:VAR} or ${env:VAR,default} "
            "(VAR: letters, digits, _)"
        )

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise KeyError(var)

    return _ENV_RE.sub(sub, value)


def apply_override(doc: SourcedDoc, assignment: str) -> None:
    """Apply one `--set dotted.path=value`; list items with an `id` may be named by it."""
    origin = f"--set {assignment.split('=', 1)[0]}"
    if "=" not in assignment:
        raise GraphConfigError([ConfigIssue(origin, "", "expected dotted.path=value")])
    raw_path, raw_value = assignment.split("=", 1)
    parts = [p for p in raw_path.strip().split(".") if p]
    if not parts:
        raise GraphConfigError([ConfigIssue(origin, "", "empty path")])
    value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    node = doc.data
    path: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: str | int
        if isinstance(node, list):
            key = _list_index(node, part, origin, dotted(tuple(path)))
        elif isinstance(node, dict):
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            reason = f"cannot set {part!r} inside a {type(node).__name__}"
            raise GraphConfigError([ConfigIssue(origin, dotted(tuple(path)), reason)])
        path.append(key)
        if last:
            node[key] = value
        else:
            node = node[key]
    for known in [k for k in doc.origins if k[: len(path)] == tuple(path)]:
        del doc.origins[known]
    for known in [k for k in doc.from_env if k[: len(path)] == tuple(path)]:
        del doc.from_env[known]  # the value is the --set's now, not the environment's
    doc.origins[tuple(path)] = origin


def _list_index(items: list[Any], part: str, origin: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            reason = f"index {index} out of range (the list has {len(items)} items)"
            raise GraphConfigError([ConfigIssue(origin, where, reason)])
        return index % len(items)
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") == part:
            return index
    raise GraphConfigError([ConfigIssue(origin, where, f"no item with id {part!r}")])
