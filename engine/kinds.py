"""What flows on each edge, checked before anything runs: packets or frames, and what frames carry.

Each built-in operator declares what it takes (`consumes`) and what it hands on (`produces`) as
class attributes. Spelling:

- `consumes`: "any", "packets", "frames", or "frames+FACT+..." where a FACT is one of
  `tensor` (a model input, made by preprocess), `outputs` (raw model outputs, by inference),
  `detections` (by postprocess), `tracks` (by a tracker) or `redacted` (by redact). A false
  config field `_WAIVERS[FACT]` waives FACT (sink.file's `require_redaction: false` waives
  `redacted`).
- `produces`: "same" (what came in), "packets" or "frames" (a new kind: decoders), or "+FACT"
  (what came in, plus FACT).

The rule is sound rather than complete: a path is refused only when its items surely fail or
surely come to nothing. An operator that declares nothing (a user's own) is not checked, and
what it hands on is unknown, so nothing downstream of it is checked either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

PACKETS, FRAMES = "packets", "frames"
FACTS = ("tensor", "outputs", "detections", "tracks", "redacted")
Kind = frozenset[str]  # {"packets"} or {"frames", facts...}

_WAIVERS = {"redacted": "require_redaction"}  # a config field that, false, waives the fact

_LABEL = {
    "tensor": "a model tensor",
    "outputs": "model outputs",
    "detections": "detections",
    "tracks": "track ids",
    "redacted": "redaction",
}
_HINT = {
    FRAMES: "add a decode node (decode.pyav) between them",
    PACKETS: "take a source's output (packets): frames are decoded already",
    "tensor": "add a preprocess node (preprocess.cpu) before it",
    "outputs": "add an inference node (infer.triton, infer.torch) before it",
    "detections": "add a postprocess node (postprocess.centerface, postprocess.textseg) before it",
    "tracks": "take the output of a tracker (track.bytetrack): zones and lines follow tracks",
}


def declaration(cls: type[Any]) -> tuple[str | None, str | None]:
    """(consumes, produces) of an operator or source class; None where it declares nothing."""
    return getattr(cls, "consumes", None), getattr(cls, "produces", None)


def _parse(spelling: str) -> Kind:
    return frozenset(p.strip() for p in spelling.split("+") if p.strip())


def requirement(cls: type[Any], config: BaseModel | None) -> Kind | None:
    """What a node's every input must carry; None: anything (not checked)."""
    consumes = declaration(cls)[0]
    if consumes is None or consumes == "any":
        return None
    need = _parse(consumes)
    return frozenset(f for f in need if f not in _WAIVERS or getattr(config, _WAIVERS[f], True) is not False)


def produced(cls: type[Any], incoming: Kind | None) -> Kind | None:
    """What a node hands on when `incoming` came in (None: unknown); a source: `incoming` None."""
    produces = declaration(cls)[1]
    if produces is None:
        return None
    if produces == "same":
        return incoming
    if produces.startswith("+"):
        return None if incoming is None else incoming | _parse(produces[1:])
    return _parse(produces)


def describe(kind: Kind) -> str:
    """'packets', 'frames', or 'frames with a model tensor, model outputs'."""
    if PACKETS in kind:
        return PACKETS
    facts = [_LABEL[f] for f in FACTS if f in kind]
    return f"{FRAMES} with {', '.join(facts)}" if facts else FRAMES


@dataclass(frozen=True)
class KindNode:
    """One node as the kind check sees it: its id, operator, config and input ids."""

    id: str
    op: str
    cls: type[Any] | None  # None: its operator could not be resolved (reported elsewhere)
    config: BaseModel | None
    inputs: list[str]  # upstream node or source ids, one per edge


def check_kinds(
    sources: dict[str, tuple[str, type[Any] | None]],
    nodes: list[KindNode],
) -> dict[str, str]:
    """Follow kinds from the sources through `nodes` (topological order); {node id: reason}
    for each node that is surely fed what it cannot use."""
    kinds: dict[str, set[Kind]] = {}
    origin: dict[str, str] = {}  # source id -> its operator, for messages
    for sid, (op, cls) in sources.items():
        kind = produced(cls, None) if cls is not None else None
        kinds[sid] = {kind} if kind is not None else set()
        origin[sid] = op
    redactors = [n.id for n in nodes if n.cls is not None and declaration(n.cls)[1] == "+redacted"]
    reasons: dict[str, str] = {}
    for node in nodes:
        out: set[Kind] = set()
        need = requirement(node.cls, node.config) if node.cls is not None else None
        for src in node.inputs:
            for kind in sorted(kinds.get(src, set()), key=sorted):
                missing = _missing(need, kind)
                if missing is None:
                    after = produced(node.cls, kind) if node.cls is not None else None
                    if after is not None:
                        out.add(after)
                elif node.id not in reasons:
                    given = f"{describe(kind)} ({origin[src]})" if src in origin else describe(kind)
                    reasons[node.id] = (
                        f"{node.op} takes {_wanted(need, missing)}, but input {src!r} gives {given}; "
                        + _hint(missing, node, redactors)
                    )
        kinds[node.id] = out
    return reasons


def _missing(need: Kind | None, kind: Kind) -> str | None:
    """The first thing `need` asks for that `kind` surely lacks; None: it fits."""
    if need is None:
        return None
    if PACKETS in need or FRAMES in need:
        wanted = PACKETS if PACKETS in need else FRAMES
        if wanted not in kind:
            return wanted
    for fact in FACTS:
        if fact in need and fact not in kind:
            return fact
    return None


def _wanted(need: Kind | None, missing: str) -> str:
    if missing in (PACKETS, FRAMES) or need is None:
        return missing
    return f"{FRAMES} with {_LABEL[missing]}"


def _hint(missing: str, node: KindNode, redactors: Iterable[str]) -> str:
    if missing != "redacted":
        return _HINT[missing]
    others = [r for r in redactors if r != node.id]
    if others:
        names = " or ".join(repr(r) for r in others)
        return f"it must take the output of the redact node {names} (or set config.require_redaction: false)"
    return "add a redact node before it (or set config.require_redaction: false)"
