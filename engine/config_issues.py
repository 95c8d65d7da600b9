"""Pydantic validation errors as plain, located reasons: 'unknown field; did you mean ...?'.

Pydantic's own wording ("Value error, ...", "Input should be a valid dictionary or instance of
GraphSpec") names its internals; a graph's author wants what is wrong and what would be right.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import ConfigIssue
from engine.yamlsource import PathKey, SourcedDoc

_MAPPING_TYPES = ("model_type", "dict_type", "model_attributes_type")
_PLAIN_TYPES = {
    "list_type": "a list",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}
_REWORDED = (("Input should be ", "must be "), ("String should ", "must "), ("List should ", "must "))


def what(value: Any) -> str:
    """A value's kind in a graph author's words (never the value: it may be a secret)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def issues_of(
    doc: SourcedDoc,
    prefix: PathKey,
    e: ValidationError,
    model: type[BaseModel],
    elsewhere: Mapping[str, type[BaseModel]] | None = None,
    owner: str = "",
) -> list[ConfigIssue]:
    """One located issue per pydantic error of `model` validated at `prefix`. `elsewhere`:
    other models (by operator name) an unknown field may belong to, named in its hint, with
    `owner` (the operator `model` configures)."""
    out = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic names union members in loc ("str", "EdgeSpec"); they are not keys
        path = tuple(p for p in loc if p not in ("str", "EdgeSpec"))
        out.append(doc.issue((*prefix, *path), _reason(err, model, path, elsewhere or {}, owner)))
    return out


def _reason(
    err: Any, model: type[BaseModel], path: PathKey, elsewhere: Mapping[str, type[BaseModel]], owner: str
) -> str:
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown field" + _field_hint(model, path, elsewhere, owner)
    if kind == "missing":
        if path and isinstance(path[-1], int):  # a fixed-length list given too few items
            return f"item {path[-1]} is missing: the list is too short"
        return "field required"
    if kind in ("value_error", "assertion_error"):
        return msg.split(", ", 1)[1] if ", " in msg else msg
    if kind in _MAPPING_TYPES:
        if err.get("input", ...) is None:  # `config:` with its fields not indented under it
            return "is empty: write its fields indented under it (or remove it)"
        return f"must be a mapping of fields (key: value), got {what(err.get('input'))}"
    if kind in _PLAIN_TYPES:
        return f"must be {_PLAIN_TYPES[kind]}, got {what(err.get('input'))}"
    msg = msg.replace(" after validation", "")
    for old, new in _REWORDED:
        if msg.startswith(old):
            return new + msg[len(old) :]
    return msg


def _field_hint(
    model: type[BaseModel], path: PathKey, elsewhere: Mapping[str, type[BaseModel]], owner: str
) -> str:
    """'; did you mean X?' for a misspelt field, or which other operators take it."""
    name = path[-1] if path else ""
    known = fields_at(model, path[:-1])
    if not isinstance(name, str) or known is None:
        return ""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    takers = sorted(op for op, other in elsewhere.items() if name in (fields_at(other, ()) or []))
    if takers:
        them = " and ".join(takers)
        return f"; only {them} take{'s' if len(takers) == 1 else ''} it" + (f", not {owner}" if owner else "")
    return ""


def fields_at(model: type[BaseModel], path: PathKey) -> list[str] | None:
    """The field names (and aliases) of the model found at `path` inside `model`; None if there
    is no model there (a free-form dict, a scalar)."""
    tp: Any = model
    for part in path:
        tp = _model_or_item(tp, part)
        if tp is None:
            return None
    tp = _unwrap(tp)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return None
    names = list(tp.model_fields)
    names += [f.alias for f in tp.model_fields.values() if f.alias]
    return names


def _unwrap(tp: Any) -> Any:
    """`X | None`, `str | Model` -> the model member (or the one member left)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else (members[0] if len(members) == 1 else tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    return tp


def _model_or_item(tp: Any, part: str | int) -> Any:
    tp = _unwrap(tp)
    if isinstance(part, int):
        if typing.get_origin(tp) in (list, tuple):
            return typing.get_args(tp)[0]
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for fname, f in tp.model_fields.items():
            if part in (fname, f.alias):
                return f.annotation
    return None
