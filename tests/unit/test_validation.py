"""Broken graphs are rejected before anything starts, each with its file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from engine import yamlsource
from engine.errors import GraphConfigError
from engine.plan import build_plan

GOOD = """\
name: g
sources:
  - id: cam0
    url: clip.mp4
nodes:
  - id: decode
    op: decode.pyav
    inputs: [sources]
  - id: sink
    op: sink.jsonl
    inputs: [decode]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(GraphConfigError) as info:
        build_plan(yamlsource.load_text(textwrap.dedent(text), "g.yaml"))
    return [str(i) for i in info.value.issues]


def test_good_graph_is_accepted() -> None:
    plan = build_plan(yamlsource.load_text(GOOD, "g.yaml"))
    assert [n.spec.id for n in plan.nodes] == ["decode", "sink"]
    assert plan.sources[0].spec.resolved_op == "source.file"


BROKEN = [
    pytest.param(
        GOOD.replace("op: decode.pyav", "op: decode.pyavv"),
        "g.yaml:7: nodes.0.op: unknown operator 'decode.pyavv'; did you mean 'decode.pyav'?",
        id="unknown-operator",
    ),
    pytest.param(
        GOOD.replace("inputs: [decode]", "inputs: [decoder]"),
        "g.yaml:11: nodes.1.inputs.0: input 'decoder' is not a node or source; did you mean 'decode'?",
        id="missing-edge",
    ),
    pytest.param(
        GOOD.replace("inputs: [sources]", "inputs: [sink]"),
        "g.yaml:8: nodes.0.inputs: cycle decode -> sink -> decode: a graph must be acyclic",
        id="cycle",
    ),
    pytest.param(
        GOOD.replace("  - id: sink", "  - id: decode"),
        "g.yaml:9: nodes.1.id: duplicate id 'decode' (first used at nodes.0.id (g.yaml:6))",
        id="duplicate-id",
    ),
    pytest.param(
        GOOD.replace("    op: decode.pyav", "    op: decode.pyav\n    config: {threads: -1}"),
        "g.yaml:8: nodes.0.config.threads: must be greater than or equal to 0",
        id="bad-config-value",
    ),
    pytest.param(
        GOOD.replace("    op: decode.pyav", "    op: decode.pyav\n    config:\n      thread: 2"),
        "g.yaml:9: nodes.0.config.thread: unknown field; did you mean 'threads'?",
        id="unknown-config-key",
    ),
    pytest.param(
        GOOD.replace("    op: sink.jsonl", "    op: sink.jsonl\n    colour: red"),
        "g.yaml:11: nodes.1.colour: unknown field",
        id="unknown-node-key",
    ),
    pytest.param(
        GOOD.replace("    op: sink.jsonl", "    op: sink.jsonl\n    queue: {policy: latency}"),
        "g.yaml:11: nodes.1.queue: policy 'latency' needs budget_ms",
        id="latency-without-budget",
    ),
    pytest.param(
        GOOD.replace("    op: sink.jsonl", "    op: sink.jsonl\n    queue: {size: 0}"),
        "g.yaml:11: nodes.1.queue.size: must be greater than or equal to 1",
        id="zero-queue",
    ),
    pytest.param(
        GOOD.replace("    op: decode.pyav", "    op: decode.pyav\n    batch: {max_batch: 4}"),
        "g.yaml:8: nodes.0.batch: operator 'decode.pyav' does not batch; remove 'batch'",
        id="batch-on-non-batching-op",
    ),
    pytest.param(
        GOOD.replace("    url: clip.mp4\n", ""), "g.yaml:3: sources.0.url: field required", id="missing-url"
    ),
    pytest.param(
        GOOD.replace("    url: clip.mp4", "    url: clip.mp4\n    op: decode.pyav"),
        "g.yaml:5: sources.0.op: 'decode.pyav' is not a source operator",
        id="node-as-source",
    ),
    pytest.param(
        GOOD.replace("name: g\n", "name: g\nname: h\n"),
        "g.yaml:2: name: duplicate key",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        GOOD.replace("inputs: [decode]", "inputs: [decode"),
        "g.yaml:12: invalid YAML: expected ',' or ']', but got '<stream end>' (the flow sequence opened on line 11)",
        id="yaml-syntax",
    ),
    pytest.param(
        GOOD.replace("url: clip.mp4", "url: ${env:FG_TEST_SURELY_UNSET}"),
        "g.yaml:4: sources.0.url: environment variable FG_TEST_SURELY_UNSET is not set",
        id="env-missing",
    ),
    pytest.param(
        GOOD.replace("  - id: decode", "  - id: 'bad id'"),
        "g.yaml:6: nodes.0.id: must match pattern '^[A-Za-z_][A-Za-z0-9_\\-]*$'",
        id="bad-id",
    ),
    pytest.param(
        "name: g\nsources: []\nnodes: []\n",
        "g.yaml:2: sources: must have at least 1 item, not 0",
        id="empty-sources",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_graph_reports_file_line_and_field(text: str, expected: str) -> None:
    assert expected in errors_of(text)


SYNTAX = [
    pytest.param(
        GOOD.replace("inputs: [sources]", "inputs: [sources\n    queue: {size: 4}"),
        "g.yaml:9: invalid YAML: expected ',' or ']', but got ':' (the flow sequence opened on line 8)",
        id="unclosed-flow-sequence",
    ),
    pytest.param(
        GOOD.replace("inputs: [sources]", "inputs: [sources]\n    queue: {size: 4\n    workers: 2"),
        "g.yaml:10: invalid YAML: expected ',' or '}', but got ':' (the flow mapping opened on line 9)",
        id="unclosed-flow-mapping",
    ),
    pytest.param(
        GOOD.replace("url: clip.mp4", 'url: "clip.mp4'),
        "g.yaml:12: invalid YAML: found unexpected end of stream (the quoted string opened on line 4)",
        id="unclosed-quote",
    ),
    pytest.param(
        GOOD.replace("    url: clip.mp4", "    url: clip.mp4\n   op: source.file"),
        "g.yaml:5: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(the list started on line 3)",
        id="bad-indent",
    ),
    pytest.param(
        GOOD.replace("    url: clip.mp4", "\turl: clip.mp4"),
        "g.yaml:4: invalid YAML: found character '\\t' that cannot start any token",
        id="tab-no-context",
    ),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX)
def test_yaml_syntax_error_names_where_the_construct_opened(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_every_issue_is_reported_at_once() -> None:
    text = GOOD.replace("op: decode.pyav", "op: nope").replace("inputs: [decode]", "inputs: [ghost]")
    found = errors_of(text)
    assert any("unknown operator 'nope'" in e for e in found)
    assert any("input 'ghost'" in e for e in found)


def test_env_interpolation_uses_value_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace("url: clip.mp4", "url: ${env:FG_CLIP,default.mp4}")
    assert build_plan(yamlsource.load_text(text, "g")).sources[0].spec.url == "default.mp4"
    monkeypatch.setenv("FG_CLIP", "rtsp://cam/1")
    plan = build_plan(yamlsource.load_text(text, "g"))
    assert plan.sources[0].spec.url == "rtsp://cam/1"
    assert plan.sources[0].spec.resolved_op == "source.rtsp"


def test_set_overrides_by_index_and_by_id() -> None:
    doc = yamlsource.load_text(GOOD, "g.yaml")
    yamlsource.apply_override(doc, "sources.0.url=other.mp4")
    yamlsource.apply_override(doc, "nodes.decode.config.threads=2")
    plan = build_plan(doc)
    assert plan.sources[0].spec.url == "other.mp4"
    assert plan.nodes[0].config.threads == 2  # type: ignore[attr-defined]


def test_set_errors_name_the_override() -> None:
    doc = yamlsource.load_text(GOOD, "g.yaml")
    yamlsource.apply_override(doc, "nodes.decode.config.threads=many")
    with pytest.raises(GraphConfigError) as info:
        build_plan(doc)
    assert str(info.value.issues[0]) == "--set nodes.decode.config.threads: must be a whole number, got text"
    assert info.value.issues[0].field == "nodes.0.config.threads"
    with pytest.raises(GraphConfigError, match="index 5 out of range"):
        yamlsource.apply_override(doc, "sources.5.url=x")
    with pytest.raises(GraphConfigError, match="no item with id 'cam9'"):
        yamlsource.apply_override(doc, "sources.cam9.url=x")


def test_rtsp_credentials_never_appear_in_errors() -> None:
    text = GOOD.replace(
        "url: clip.mp4", "url: rtsp://admin:hunter2@cam/1\n    config: {transport: carrier-pigeon}"
    )
    found = "\n".join(errors_of(text))
    assert "transport" in found
    assert "hunter2" not in found


def test_device_aliases_pick_the_cpu_operators_here() -> None:
    from engine import device

    if device.nvdec_available():
        pytest.skip("this machine decodes on NVDEC: auto picks cuda")
    text = GOOD.replace("op: decode.pyav", "op: decode")
    plan = build_plan(yamlsource.load_text(text, "g.yaml"))
    assert plan.device == "cpu"
    assert plan.nodes[0].op == "decode.pyav"
    assert "CUDA" in plan.device_reason or "torch" in plan.device_reason


def test_device_cuda_without_a_gpu_is_a_clear_error() -> None:
    from engine import device

    if device.cuda_available():
        pytest.skip("this machine has a GPU")
    found = errors_of(GOOD.replace("name: g\n", "name: g\ndevice: cuda\n"))
    assert found[0].startswith("g.yaml:2: device: ")


PRE = GOOD.replace(
    "  - id: sink\n    op: sink.jsonl\n    inputs: [decode]\n",
    "  - id: pre\n    op: preprocess.cpu\n    inputs: [decode]\n    config:\n{config}\n"
    "  - id: sink\n    op: sink.jsonl\n    inputs: [pre]\n",
)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            "    width: 320\n    height: 192",
            [
                "g.yaml:12: nodes.1.config: is empty: write its fields indented under it (or remove it)",
                "g.yaml:13: nodes.1.width: unknown field; it is a field of preprocess.cpu's config: "
                "indent it under 'config:'",
                "g.yaml:14: nodes.1.height: unknown field; it is a field of preprocess.cpu's config: "
                "indent it under 'config:'",
            ],
            id="fields-not-indented-under-config",
        ),
        pytest.param(
            "      mean: [0.5, 0.5]",
            ["g.yaml:13: nodes.1.config.mean.2: item 2 is missing: the list is too short"],
            id="short-fixed-list",
        ),
        pytest.param(
            "      width: ${env:FG_TEST_WIDTH}",
            ["g.yaml:13: nodes.1.config.width: must be a whole number, got text (the value comes from "
             "${env:FG_TEST_WIDTH})"],
            id="env-value-of-the-wrong-type",
        ),
    ],
)  # fmt: skip
def test_config_mistakes_say_what_to_do(
    config: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_TEST_WIDTH", "wide")
    assert errors_of(PRE.replace("{config}", config)) == expected


def test_an_env_reference_inside_a_flow_mapping_must_be_quoted() -> None:
    text = GOOD.replace(
        "    inputs: [sources]", "    inputs: [sources]\n    config: {threads: ${env:FG_T,2}}"
    )
    (found,) = errors_of(text)
    assert found.endswith('; inside {...} or [...] quote a reference: "${env:NAME,default}"'), found


def test_a_misspelt_set_path_is_named_as_the_set_not_the_file_line(tmp_path: object) -> None:
    doc = yamlsource.load_text(GOOD, "g.yaml")
    yamlsource.apply_override(doc, "nodes.decode.confg.threads=2")
    with pytest.raises(GraphConfigError) as info:
        build_plan(doc)
    assert [str(i) for i in info.value.issues] == [
        "--set nodes.decode.confg.threads: nodes.0.confg: unknown field; did you mean 'config'?"
    ]


def test_a_set_value_is_not_said_to_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_TEST_THREADS", "2")
    text = GOOD.replace(
        "    inputs: [sources]", "    inputs: [sources]\n    config: {threads: '${env:FG_TEST_THREADS}'}"
    )
    doc = yamlsource.load_text(text, "g.yaml")
    yamlsource.apply_override(doc, "nodes.decode.config.threads=many")
    with pytest.raises(GraphConfigError) as info:
        build_plan(doc)
    (issue,) = [str(i) for i in info.value.issues]
    assert "threads" in issue
    assert "environment" not in issue
    assert "${env:" not in issue
