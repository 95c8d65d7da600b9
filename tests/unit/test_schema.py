"""`framegraph schema`: editors complete operator names and check each operator's config."""

from __future__ import annotations

import copy
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator as Validator
from pydantic import ConfigDict

from engine import registry
from engine.cli import main
from engine.schema import graph_schema
from engine.spec import StrictModel

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))


GOOD: dict[str, Any] = {
    "name": "g",
    "sources": [{"id": "cam0", "url": "clip.mp4"}],
    "nodes": [
        {"id": "decode", "op": "decode.pyav", "inputs": ["sources"], "config": {"threads": 2}},
        {"id": "sink", "op": "sink.jsonl", "inputs": ["decode"]},
    ],
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return graph_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Validator:
    return Validator(schema)


def messages(validator: Validator, graph: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(graph)]


def with_node(**changes: Any) -> dict[str, Any]:
    graph = copy.deepcopy(GOOD)
    graph["nodes"][0].update(changes)
    return graph


def with_source(**changes: Any) -> dict[str, Any]:
    graph = copy.deepcopy(GOOD)
    graph["sources"][0].update(changes)
    return graph


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a JSON document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_schema_is_valid_json_schema_2020_12(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Validator.check_schema(schema)


def test_every_ref_names_a_definition(schema: dict[str, Any]) -> None:
    refs = {m["$ref"] for m in walk(schema) if "$ref" in m}
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


@pytest.mark.parametrize("path", GRAPHS, ids=[p.name for p in GRAPHS])
def test_every_shipped_graph_fits_the_schema(validator: Validator, path: Path) -> None:
    # as an editor sees the file: `${env:...}` not yet interpolated
    assert messages(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_good_graph_fits(validator: Validator) -> None:
    assert messages(validator, GOOD) == []


def test_node_op_lists_every_operator_and_the_device_aliases(schema: dict[str, Any]) -> None:
    names = set(schema["$defs"]["NodeSpec"]["properties"]["op"]["enum"])
    assert {"decode.pyav", "infer.triton", "sink.kafka", "track.bytetrack", "redact"} <= names
    assert {"decode", "preprocess"} <= names
    assert not any(n.startswith("source.") for n in names)


def test_source_op_lists_the_source_operators(schema: dict[str, Any]) -> None:
    op = schema["$defs"]["SourceSpec"]["properties"]["op"]
    names = set(op["anyOf"][0]["enum"])  # other tests may register sources of their own
    assert {"source.file", "source.images", "source.rtsp"} <= names
    assert "decode.pyav" not in names
    assert "decode" not in names
    assert op["anyOf"][1] == {"type": "null"}


def test_wrong_node_op_is_rejected(validator: Validator) -> None:
    assert any("'decode.pyavv' is not one of" in m for m in messages(validator, with_node(op="decode.pyavv")))


def test_source_operator_as_node_op_is_rejected(validator: Validator) -> None:
    assert messages(validator, with_node(op="source.file", config={}))


def test_wrong_source_op_is_rejected(validator: Validator) -> None:
    assert messages(validator, with_source(op="decode.pyav"))


def test_misspelt_node_config_field_is_rejected(validator: Validator) -> None:
    found = messages(validator, with_node(config={"thread": 2}))
    assert any("'thread' was unexpected" in m for m in found)


def test_wrong_type_in_node_config_is_rejected(validator: Validator) -> None:
    assert messages(validator, with_node(config={"threads": "many"}))
    assert messages(validator, with_node(config={"threads": -1}))


def test_config_is_checked_against_the_op_it_names(validator: Validator) -> None:
    # `threads` is decode.pyav's; sink.jsonl has no such field
    graph = copy.deepcopy(GOOD)
    graph["nodes"][1]["config"] = {"threads": 2}
    assert any("'threads' was unexpected" in m for m in messages(validator, graph))


def test_misspelt_kafka_field_is_rejected(validator: Validator) -> None:
    config = {"bootstrap": "b:9092", "topic": "t", "sasl_pasword": "x"}
    graph = with_node(id="publish", op="sink.kafka", config=config)
    assert any("'sasl_pasword' was unexpected" in m for m in messages(validator, graph))


def test_device_alias_takes_a_config_of_any_of_its_operators(validator: Validator) -> None:
    assert messages(validator, with_node(op="decode", config={"threads": 2})) == []
    assert messages(validator, with_node(op="decode", config={"thread": 2}))
    assert messages(validator, with_node(op="preprocess", config={"width": 640, "height": 384})) == []
    assert messages(validator, with_node(op="preprocess", config={"widht": 640}))


@pytest.mark.parametrize(
    ("url", "config", "fits"),
    [
        ("clip.mp4", {"loop": True}, True),
        ("clip.mp4", {"transport": "tcp"}, False),  # an RTSP option on a file
        ("rtsp://cam/main", {"transport": "tcp"}, True),
        ("RTSPS://cam/main", {"max_reconnects": 3}, True),
        ("rtsp://cam/main", {"loop": True}, False),  # a file option on a camera
        ("${env:FG_INPUT,clip.mp4}", {"loop": True}, True),  # either: the environment decides
        ("${env:FG_INPUT,clip.mp4}", {"transport": "udp"}, True),
        ("${env:FG_INPUT,clip.mp4}", {"lop": True}, False),
    ],
)
def test_source_without_op_is_checked_by_its_url(
    validator: Validator, url: str, config: dict[str, Any], fits: bool
) -> None:
    assert (messages(validator, with_source(url=url, config=config)) == []) is fits
    assert (messages(validator, with_source(url=url, op=None, config=config)) == []) is fits


def test_source_op_picks_the_config_over_the_url(validator: Validator) -> None:
    graph = with_source(url="clip.mp4", op="source.rtsp", config={"transport": "tcp"})
    assert messages(validator, graph) == []
    assert messages(validator, with_source(op="source.images", config={"loop": True}))


def test_field_descriptions_come_through(schema: dict[str, Any]) -> None:
    decode = registry.resolve("decode.pyav").Config
    ref = next(
        r["then"]["properties"]["config"]["$ref"]
        for r in schema["$defs"]["NodeSpec"]["allOf"]
        if r["if"]["properties"]["op"]["const"] == "decode.pyav"
    )
    threads = schema["$defs"][ref.removeprefix("#/$defs/")]["properties"]["threads"]
    assert threads["description"] == decode.model_fields["threads"].description


def test_same_named_configs_do_not_clash(schema: dict[str, Any]) -> None:
    rules = [*schema["$defs"]["NodeSpec"]["allOf"], *schema["$defs"]["SourceSpec"]["allOf"]]
    by_op = {
        r["if"]["properties"]["op"]["const"]: r["then"]["properties"]["config"].get("$ref")
        for r in rules
        if "const" in r["if"]["properties"]["op"]
    }
    # operators.sources.FileConfig and operators.video_out.FileConfig (RtspConfig likewise)
    assert by_op["source.file"] != by_op["sink.file"]
    assert by_op["source.rtsp"] != by_op["sink.rtsp"]


def test_secrets_have_no_default_or_example(schema: dict[str, Any]) -> None:
    kafka = next(v for k, v in schema["$defs"].items() if k.endswith("KafkaSinkConfig"))
    for field in ("sasl_password", "ssl_password"):
        assert "default" not in kafka["properties"][field]
    secret = [m for m in walk(schema) if m.get("writeOnly") or m.get("format") == "password"]
    assert secret
    for m in walk(schema):
        branches = [m, *m.get("anyOf", []), *m.get("oneOf", [])]
        if any(b.get("writeOnly") or b.get("format") == "password" for b in branches):
            assert "default" not in m, m
            assert "examples" not in m, m


class _PluginConfig(StrictModel):
    """Options of the test plugin."""

    level: int = 1


class _PluginOp(registry.Operator[_PluginConfig]):
    Config = _PluginConfig


def test_registered_plugin_operator_joins_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, "plugin.level", _PluginOp)
    validator = Validator(graph_schema())
    assert messages(validator, with_node(op="plugin.level", config={"level": 3})) == []
    assert messages(validator, with_node(op="plugin.level", config={"levle": 3}))


class _Opaque:
    """A type pydantic has no JSON Schema for."""


class _OpaqueConfig(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    thing: _Opaque | None = None


class _OpaqueOp(registry.Operator[_OpaqueConfig]):
    Config = _OpaqueConfig


def test_operator_whose_config_has_no_schema_is_listed_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, "plugin.opaque", _OpaqueOp)
    schema = graph_schema()
    Validator.check_schema(schema)
    assert "plugin.opaque" in schema["$defs"]["NodeSpec"]["properties"]["op"]["enum"]
    assert messages(Validator(schema), with_node(op="plugin.opaque", config={"anything": 1})) == []


def test_cli_schema_prints_the_schema(capsys: pytest.CaptureFixture[str], schema: dict[str, Any]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == schema


def test_cli_schema_imports_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fg_schema_plugin.py").write_text(
        textwrap.dedent(
            """\
            from engine.registry import Operator, register


            @register("plugin.echo")
            class Echo(Operator):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_registered", dict(registry._registered))
    try:
        assert main(["schema", "--plugin", "fg_schema_plugin"]) == 0
    finally:
        sys.modules.pop("fg_schema_plugin", None)
    printed = json.loads(capsys.readouterr().out)
    assert "plugin.echo" in printed["$defs"]["NodeSpec"]["properties"]["op"]["enum"]
