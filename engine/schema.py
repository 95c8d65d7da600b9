"""The JSON Schema of graph files that `framegraph schema` prints, for editors.

Beyond the shape of the graph (engine/spec.py) it knows the operators: a node's or source's `op`
is one of the registered names (completion in an editor), and its `config` is checked against
that operator's own Config model (unknown or misspelt fields, wrong types, field descriptions on
hover). Every model's definition lives once in `$defs`; pydantic names two classes that share a
name (`operators.sources.FileConfig`, `operators.video_out.FileConfig`) apart.

Where the graph file alone does not say which operator runs, the schema is looser and
`framegraph validate` decides: a device alias (`decode`, `preprocess`) takes a config of any
operator it may resolve to; a source without `op` is checked against `source.rtsp` when its URL
starts `rtsp://`/`rtsps://`, against `source.file` for any other URL or path, and against either
when the URL holds a `${env:...}` (only the environment tells which). Not in the schema: model
validators (cross-field rules), the graph's wiring, and `${env:...}` standing for a number or a
choice (the schema sees text there). Secret fields (SecretStr) carry no default or example.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, PydanticUserError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from engine.device import OP_ALIASES
from engine.registry import Operator, Source, known_names, resolve
from engine.spec import GraphSpec, NodeSpec, SourceSpec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
RTSP_URL_PATTERN = "^[Rr][Tt][Ss][Pp][Ss]?://"  # spec.RTSP_SCHEMES, any case (ECMA 262: no (?i))
ENV_MARK = "${"  # a URL holding an interpolation may become any scheme
_MODE: JsonSchemaMode = "validation"
_SECRET_KEYS = ("default", "examples")


def operator_classes() -> tuple[dict[str, type[Any]], dict[str, type[Any]]]:
    """({node operator name: class}, {source operator name: class}) of every registered name
    whose module imports (built-ins are imported here, as a graph's validation would)."""
    nodes: dict[str, type[Any]] = {}
    sources: dict[str, type[Any]] = {}
    for name in known_names():
        try:
            cls = resolve(name)
        except (KeyError, ImportError):
            continue
        if isinstance(cls, type) and issubclass(cls, Source):
            sources[name] = cls
        elif isinstance(cls, type) and issubclass(cls, Operator):
            nodes[name] = cls
    return nodes, sources


def graph_schema() -> dict[str, Any]:
    """The graph file's JSON Schema (draft 2020-12), operators and their configs included."""
    nodes, sources = operator_classes()
    configs = _describable_configs([*nodes.values(), *sources.values()])
    models: list[type[BaseModel]] = [GraphSpec, NodeSpec, SourceSpec, *configs]
    keyed, top = models_json_schema([(m, _MODE) for m in models], by_alias=True)
    defs: dict[str, Any] = top["$defs"]
    ref = {model: keyed[(model, _MODE)] for model in models}

    node_def = defs[_def_name(ref[NodeSpec])]
    aliases = {a: targets for a in sorted(OP_ALIASES) if (targets := _alias_targets(a, nodes))}
    node_def["properties"]["op"] = _op_property(node_def["properties"]["op"], sorted({*nodes, *aliases}))
    node_def["allOf"] = _op_rules(nodes, ref) + [
        _when_op(alias, _any_of([ref[c.Config] for c in targets]))
        for alias, targets in aliases.items()
        if all(c.Config in ref for c in targets)
    ]

    source_def = defs[_def_name(ref[SourceSpec])]
    op_schema = source_def["properties"]["op"]
    source_def["properties"]["op"] = {
        **{k: v for k, v in op_schema.items() if k != "anyOf"},
        "anyOf": [_op_property({}, sorted(sources)), {"type": "null"}],
    }
    source_def["allOf"] = _op_rules(sources, ref) + _url_rules(sources, ref)

    schema: dict[str, Any] = {"$schema": DRAFT}
    schema.update(defs.pop(_def_name(ref[GraphSpec])))
    schema["$defs"] = defs
    _hide_secret_values(schema)
    return schema


def _describable_configs(classes: list[type[Any]]) -> list[type[BaseModel]]:
    """The distinct Config models of `classes` that have a JSON Schema (a plugin's model with a
    field pydantic cannot describe is left out: its operator's config goes unchecked)."""
    out: list[type[BaseModel]] = []
    for cls in classes:
        config = getattr(cls, "Config", None)
        if not isinstance(config, type) or not issubclass(config, BaseModel) or config in out:
            continue
        try:
            config.model_json_schema(mode=_MODE)
        except PydanticUserError:  # PydanticInvalidForJsonSchema and kin
            continue
        out.append(config)
    return out


def _op_rules(ops: dict[str, type[Any]], ref: dict[type[BaseModel], dict[str, Any]]) -> list[dict[str, Any]]:
    """One if/then rule per operator whose config has a schema."""
    return [_when_op(name, ref[cls.Config]) for name, cls in sorted(ops.items()) if cls.Config in ref]


def _def_name(ref: dict[str, Any]) -> str:
    """'NodeSpec' of {'$ref': '#/$defs/NodeSpec'}."""
    return str(ref["$ref"]).rsplit("/", 1)[1]


def _alias_targets(alias: str, nodes: dict[str, type[Any]]) -> list[type[Any]]:
    """The registered classes a device alias may resolve to, on any device (each once)."""
    out: list[type[Any]] = []
    for names in OP_ALIASES[alias].values():
        for name in names:
            if name in nodes and nodes[name] not in out:
                out.append(nodes[name])
    return out


def _op_property(base: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """`base` (its description, title) with `op` limited to `names`."""
    return {**base, "type": "string", "enum": names}


def _when_op(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """`config` must fit `config` when `op` is `name`."""
    return {
        "if": {"properties": {"op": {"const": name}}, "required": ["op"]},
        "then": {"properties": {"config": config}},
    }


def _any_of(refs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ref, or any of several distinct ones."""
    unique = [r for i, r in enumerate(refs) if r not in refs[:i]]
    return unique[0] if len(unique) == 1 else {"anyOf": unique}


def _url_rules(sources: dict[str, type[Any]], ref: dict[type[BaseModel], dict[str, Any]]) -> list[Any]:
    """if/then rules for a source without `op` (or `op: null`): its URL picks the operator
    (engine/spec.py `op_for_url`); a URL with `${...}` in it may pick either."""
    if any(name not in sources or sources[name].Config not in ref for name in ("source.rtsp", "source.file")):
        return []
    rtsp, file = ref[sources["source.rtsp"].Config], ref[sources["source.file"].Config]
    no_op: dict[str, Any] = {"type": "null"}  # absent or null: `properties` skips an absent key
    env = {"pattern": _escape(ENV_MARK)}
    return [
        {
            "if": {"properties": {"op": no_op, "url": {"pattern": RTSP_URL_PATTERN}}, "required": ["url"]},
            "then": {"properties": {"config": rtsp}},
        },
        {
            "if": {
                "properties": {"op": no_op, "url": {"not": {"pattern": RTSP_URL_PATTERN}}},
                "required": ["url"],
            },
            "then": {
                "if": {"properties": {"url": env}},
                "then": {"properties": {"config": _any_of([file, rtsp])}},
                "else": {"properties": {"config": file}},
            },
        },
    ]


def _escape(text: str) -> str:
    """`text` as a regular expression matching it literally."""
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}" else c for c in text)


def _is_secret(schema: Any) -> bool:
    """Whether a property's schema is (or may be) a secret: pydantic marks SecretStr/SecretBytes
    `writeOnly` with format `password`."""
    if not isinstance(schema, dict):
        return False
    if schema.get("writeOnly") or schema.get("format") == "password":
        return True
    return any(_is_secret(s) for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key, []))


def _hide_secret_values(schema: Any) -> None:
    """Drop any default or example value of a secret field, at every depth (in place)."""
    if isinstance(schema, list):
        for item in schema:
            _hide_secret_values(item)
        return
    if not isinstance(schema, dict):
        return
    if _is_secret(schema):
        for key in _SECRET_KEYS:
            schema.pop(key, None)
    for value in schema.values():
        _hide_secret_values(value)
