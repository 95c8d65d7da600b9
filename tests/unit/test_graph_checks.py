"""Whole-graph checks of `validate`: what each operator is fed, every error at once, cycles named
exactly, plain reasons with hints, URL schemes, and the usage lines of the shipped graphs."""

from __future__ import annotations

import asyncio
import shlex
import textwrap
from pathlib import Path

import pytest

from engine import yamlsource
from engine.errors import GraphConfigError, OperatorError
from engine.metrics import Metrics
from engine.plan import build_plan, load_plan
from engine.registry import Operator, OperatorContext, register
from operators.sinks import JsonlConfig, JsonlSink

GRAPHS = sorted(Path(__file__).resolve().parents[2].joinpath("graphs").glob("*.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(GraphConfigError) as info:
        build_plan(yamlsource.load_text(textwrap.dedent(text), "g.yaml"))
    return [str(i) for i in info.value.issues]


def graph(*nodes: str) -> str:
    """A one-source graph with these nodes, one `{id: ..., op: ..., inputs: [...]}` a line."""
    body = "\n".join(f"  - {n}" for n in nodes)
    return f"name: g\nsources:\n  - {{id: cam0, url: clip.mp4}}\nnodes:\n{body}\n"


DETECT = [
    "{id: decode, op: decode.pyav, inputs: [sources]}",
    "{id: pre, op: preprocess.cpu, inputs: [decode]}",
    "{id: detect, op: infer.triton, inputs: [pre], config: {model: centerface}}",
    "{id: faces, op: postprocess.centerface, inputs: [detect]}",
]


def test_a_detection_graph_is_fed_what_each_node_takes() -> None:
    plan = build_plan(yamlsource.load_text(graph(*DETECT, "{id: out, op: sink.jsonl, inputs: [faces]}"), "g"))
    assert [n.spec.id for n in plan.nodes] == ["decode", "pre", "detect", "faces", "out"]


def test_preprocess_fed_packets_is_refused_with_a_decode_hint() -> None:
    found = errors_of(graph("{id: pre, op: preprocess.cpu, inputs: [sources]}"))
    assert found == [
        "g.yaml:5: nodes.0.inputs: preprocess.cpu takes frames, but input 'cam0' gives packets "
        "(source.file); add a decode node (decode.pyav) between them"
    ]


def test_postprocess_without_inference_is_refused() -> None:
    found = errors_of(graph(DETECT[0], "{id: faces, op: postprocess.centerface, inputs: [decode]}"))
    assert found == [
        "g.yaml:6: nodes.1.inputs: postprocess.centerface takes frames with model outputs, but input "
        "'decode' gives frames; add an inference node (infer.triton, infer.torch) before it"
    ]


def test_inference_without_preprocess_and_decode_of_frames_are_refused() -> None:
    found = errors_of(
        graph(
            DETECT[0],
            "{id: detect, op: infer.triton, inputs: [decode], config: {model: m}}",
            "{id: again, op: decode.pyav, inputs: [decode]}",
        )
    )
    assert "nodes.1.inputs: infer.triton takes frames with a model tensor" in found[0]
    assert "add a preprocess node" in found[0]
    assert "nodes.2.inputs: decode.pyav takes packets, but input 'decode' gives frames" in found[1]


REDACTION = [
    *DETECT,
    "{id: redact, op: redact, inputs: [faces]}",
]


def test_file_sink_must_take_the_redact_nodes_output() -> None:
    found = errors_of(graph(*REDACTION, "{id: video, op: sink.file, inputs: [decode]}"))
    assert found == [
        "g.yaml:10: nodes.5.inputs: sink.file takes frames with redaction, but input 'decode' gives "
        "frames; it must take the output of the redact node 'redact' (or set config.require_redaction: false)"
    ]
    build_plan(yamlsource.load_text(graph(*REDACTION, "{id: video, op: sink.file, inputs: [redact]}"), "g"))
    waived = "{id: video, op: sink.file, inputs: [decode], config: {require_redaction: false}}"
    build_plan(yamlsource.load_text(graph(*REDACTION, waived), "g"))


def test_a_misspelt_field_does_not_hide_a_wrong_input_on_the_same_node() -> None:
    found = errors_of(graph(*REDACTION, "{id: video, op: sink.file, inputs: [decode], config: {pth: a.mp4}}"))
    assert any("nodes.5.config.pth" in f for f in found), found
    assert any("nodes.5.inputs: sink.file takes frames with redaction" in f for f in found), found
    # a waiver that did validate is honoured while another field is wrong
    waived = "{id: video, op: sink.file, inputs: [decode], config: {require_redaction: false, pth: a.mp4}}"
    found = errors_of(graph(*REDACTION, waived))
    assert found
    assert all("inputs" not in f for f in found), found


def test_a_source_with_a_bad_config_still_feeds_the_kind_check() -> None:
    text = graph("{id: pre, op: preprocess.cpu, inputs: [sources]}").replace(
        "url: clip.mp4}", "url: clip.mp4, config: {lop: true}}"
    )
    found = errors_of(text)
    assert any("sources.0.config.lop" in f for f in found), found
    assert any("preprocess.cpu takes frames, but input 'cam0' gives packets" in f for f in found), found


def test_zones_need_a_tracker_before_them() -> None:
    zones = "config: {lines: [{id: gate, a: [0, 100], b: [640, 100]}]}"
    found = errors_of(graph(*DETECT, f"{{id: zones, op: analytics.zones, inputs: [faces], {zones}}}"))
    assert found == [
        "g.yaml:9: nodes.4.inputs: analytics.zones takes frames with track ids, but input "
        "'faces' gives frames with a model tensor, model outputs, detections; take the output of a "
        "tracker (track.bytetrack): zones and lines follow tracks"
    ]
    tracked = graph(
        *DETECT,
        "{id: track, op: track.bytetrack, inputs: [faces]}",
        f"{{id: zones, op: analytics.zones, inputs: [track], {zones}}}",
    )
    build_plan(yamlsource.load_text(tracked, "g"))


def test_output_path_placeholders_must_be_ones_the_sink_fills() -> None:
    found = errors_of(
        graph(
            DETECT[0],
            "{id: events, op: sink.jsonl, inputs: [decode], config: {path: '{stream}.jsonl'}}",
            "{id: video, op: sink.file, inputs: [decode], config: {path: '{strem}.mp4', require_redaction: false}}",
            "{id: push, op: sink.rtsp, inputs: [decode], config: {url: 'rtsp://h/{id}', require_redaction: false}}",
            "{id: ok, op: sink.file, inputs: [decode], config: {path: '{graph}/{stream}_{segment:04d}.mp4', "
            "segment_s: 5, require_redaction: false}}",
        )
    )
    assert found == [
        "g.yaml:6: nodes.1.config.path: unknown placeholder {stream} in '{stream}.jsonl': it knows {graph} "
        "(one file holds every stream: each line names its stream)",
        "g.yaml:7: nodes.2.config.path: unknown placeholder {strem} in '{strem}.mp4': it knows {graph}, "
        "{stream}, {segment}",
        "g.yaml:8: nodes.3.config.url: unknown placeholder {id} in 'rtsp://h/{id}': it knows {stream}",
    ]


def test_a_bad_setting_a_cycle_and_a_wrong_input_are_reported_in_one_go() -> None:
    """A refused `queue` must not hide the graph's other errors, nor a cycle the wrong kinds
    beside it: an author fixes them in one round, not three."""
    found = errors_of(
        graph(
            DETECT[0],
            "{id: pre, op: preprocess.cpu, inputs: [decode, faces]}",
            "{id: detect, op: infer.triton, inputs: [pre], config: {model: centerface}}",
            "{id: faces, op: postprocess.centerface, inputs: [detect]}",
            "{id: redact, op: redact, inputs: [pre]}",
            "{id: events, op: sink.jsonl, inputs: [faces], queue: {size: -1}, batch: {max_batch: 0}}",
        )
    )
    assert found == [
        "g.yaml:6: nodes.1.inputs: cycle pre -> detect -> faces -> pre: a graph must be acyclic",
        "g.yaml:9: nodes.4.inputs: redact takes frames with detections, but input 'pre' gives frames "
        "with a model tensor; add a postprocess node (postprocess.centerface, postprocess.textseg) before it",
        "g.yaml:10: nodes.5.queue.size: must be greater than or equal to 1",
        "g.yaml:10: nodes.5.batch.max_batch: must be greater than or equal to 1",
        "g.yaml:10: nodes.5.batch: operator 'sink.jsonl' does not batch; remove 'batch'",
    ]


def test_a_knot_of_two_cycles_names_both_without_a_traceback() -> None:
    found = errors_of(
        graph(
            DETECT[0],
            "{id: a, op: preprocess.cpu, inputs: [decode, b, c]}",
            "{id: b, op: preprocess.cpu, inputs: [a]}",
            "{id: c, op: preprocess.cpu, inputs: [a]}",
            "{id: out, op: sink.null, inputs: [a]}",
        )
    )
    assert found == [
        "g.yaml:6: nodes.1.inputs: cycle a -> b -> a: a graph must be acyclic",
        "g.yaml:6: nodes.1.inputs: cycle a -> c -> a: a graph must be acyclic",
    ]


def test_an_input_named_twice_says_so_and_a_bad_config_gives_no_second_error() -> None:
    found = errors_of(
        graph(
            DETECT[0],
            "{id: pre, op: preprocess.cpu, inputs: [decode]}",
            "{id: detect, op: infer.triton, inputs: [pre], config: [model, centerface]}",
            "{id: out, op: sink.null, inputs: [detect, decode, decode]}",
        )
    )
    assert found == [
        "g.yaml:7: nodes.2.config: must be a mapping of fields (key: value), got a list",
        "g.yaml:8: nodes.3.inputs.2: input 'decode' is given twice (it is named already): every item "
        "would arrive twice",
    ]


def test_redact_and_tracker_need_detections() -> None:
    found = errors_of(graph(DETECT[0], "{id: redact, op: redact, inputs: [decode]}"))
    assert "redact takes frames with detections" in found[0]
    assert "add a postprocess node" in found[0]


def test_only_the_first_broken_node_of_a_path_is_reported() -> None:
    found = errors_of(graph("{id: pre, op: preprocess.cpu, inputs: [sources]}", *DETECT[2:]))
    assert len(found) == 1
    assert "preprocess.cpu takes frames" in found[0]


@register("test.custom_checks")
class _Custom(Operator):  # type: ignore[type-arg]
    """A user's operator: declares nothing, so neither it nor anything after it is checked."""


def test_undeclared_operators_and_what_follows_them_are_not_checked() -> None:
    build_plan(
        yamlsource.load_text(
            graph(
                "{id: custom, op: test.custom_checks, inputs: [sources]}",
                "{id: faces, op: postprocess.centerface, inputs: [custom]}",
            ),
            "g",
        )
    )


def test_structural_and_config_errors_are_listed_together() -> None:
    text = graph(
        "{id: decode, op: decode.pyav, inputs: [sources], queue: {size: many}}",
        "{id: pre, op: preprocess.cpu, inputs: [decode], config: {width: wide}}",
    )
    assert errors_of(text) == [
        "g.yaml:5: nodes.0.queue.size: must be a whole number, got text",
        "g.yaml:6: nodes.1.config.width: must be a whole number, got text",
    ]


def test_a_cycle_names_only_its_nodes_in_order() -> None:
    found = errors_of(
        graph(
            "{id: decode, op: decode.pyav, inputs: [sources]}",
            "{id: a, op: sink.null, inputs: [decode, b]}",
            "{id: b, op: sink.null, inputs: [a]}",
            "{id: sink, op: sink.null, inputs: [b]}",
        )
    )
    assert found == ["g.yaml:6: nodes.1.inputs: cycle a -> b -> a: a graph must be acyclic"]


def test_a_self_loop_and_two_cycles_are_each_named() -> None:
    found = errors_of(
        graph(
            "{id: a, op: sink.null, inputs: [sources, a]}",
            "{id: b, op: sink.null, inputs: [sources, c]}",
            "{id: c, op: sink.null, inputs: [b]}",
        )
    )
    assert [f.split(": ", 2)[2] for f in found] == [
        "cycle a -> a: a graph must be acyclic",
        "cycle b -> c -> b: a graph must be acyclic",
    ]


def test_duplicate_ids_give_only_the_duplicate_error() -> None:
    found = errors_of(graph(DETECT[0], "{id: decode, op: sink.null, inputs: [decode]}"))
    assert found == ["g.yaml:6: nodes.1.id: duplicate id 'decode' (first used at nodes.0.id (g.yaml:5))"]


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (
            "{id: d, op: decode.pyav, inputs: [sources], confg: {}}",
            "nodes.0.confg: unknown field; did you mean 'config'?",
        ),
        (
            "{id: d, op: decode.pyav, inputs: [sources], queu: {}}",
            "nodes.0.queu: unknown field; did you mean 'queue'?",
        ),
        (
            "{id: d, op: decode.pyav, inputs: [sources], config: {thread_typ: slice}}",
            "nodes.0.config.thread_typ: unknown field; did you mean 'thread_type'?",
        ),
        (
            "{id: d, op: decode.pyav, inputs: [{from: sources, queue: {sise: 2}}]}",
            "nodes.0.inputs.0.queue.sise: unknown field; did you mean 'size'?",
        ),
    ],
)
def test_unknown_fields_suggest_the_known_one(node: str, expected: str) -> None:
    assert any(f.endswith(expected) for f in errors_of(graph(node))), errors_of(graph(node))


def test_set_of_another_source_kinds_field_prints_the_path_once_and_names_the_kind() -> None:
    doc = yamlsource.load_text(graph(DETECT[0]), "g.yaml")
    yamlsource.apply_override(doc, "sources.0.config.max_reconnects=2")
    with pytest.raises(GraphConfigError) as info:
        build_plan(doc)
    assert [str(i) for i in info.value.issues] == [
        "--set sources.0.config.max_reconnects: unknown field; only source.rtsp takes it, not source.file"
    ]
    assert info.value.issues[0].field == "sources.0.config.max_reconnects"  # the API still gets the path


def test_pydantic_wording_reads_as_plain_reasons() -> None:
    assert errors_of("- just\n- a list\n") == [
        "g.yaml:1: must be a mapping of fields (key: value), got a list"
    ]
    found = errors_of(graph("{id: d, op: sink.null, inputs: [sources], queue: {policy: latency}}"))
    assert found == ["g.yaml:5: nodes.0.queue: policy 'latency' needs budget_ms"]


def test_an_unknown_url_scheme_is_refused_naming_the_supported_ones() -> None:
    found = errors_of(graph(DETECT[0]).replace("url: clip.mp4", "url: 'htp://bad url'"))
    assert len(found) == 1
    assert found[0].startswith(
        "g.yaml:3: sources.0.url: unknown URL scheme 'htp://': give a file path or a URL of"
    )
    assert "rtsp://" in found[0]
    assert "https://" in found[0]
    for ok in ("http://cam/x.mp4", "rtsps://cam/1", "file:///clips/a.mp4", "C:/clips/a.mp4"):
        build_plan(yamlsource.load_text(graph(DETECT[0]).replace("clip.mp4", ok), "g"))


def test_an_unclosed_env_reference_is_refused_with_its_line() -> None:
    found = errors_of(graph(DETECT[0]).replace("url: clip.mp4", "url: '${env:FG_INPUT'"))
    assert found == [
        "g.yaml:3: sources.0.url: unclosed or malformed '${env:...}': write ${env:VAR} or "
        "${env:VAR,default} (VAR: letters, digits, _)"
    ]


def _jsonl(tmp_path: Path, output: Path, preflight: bool) -> JsonlSink:
    ctx = OperatorContext("events", Metrics().node("events"), output_dir=output, graph_name="g")
    ctx.preflight = preflight
    return JsonlSink(JsonlConfig(), ctx)


def test_jsonl_sink_makes_no_file_in_preflight(tmp_path: Path) -> None:
    sink = _jsonl(tmp_path, tmp_path / "out", preflight=True)
    asyncio.run(sink.setup())
    asyncio.run(sink.teardown())
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    output = tmp_path / "file.mp4"
    output.write_bytes(b"")
    for preflight in (False, True):
        with pytest.raises(OperatorError, match=r"file\.mp4.*(a file|directory)"):
            asyncio.run(_jsonl(tmp_path, output, preflight).setup())


def _usage_lines(path: Path) -> list[list[str]]:
    """The `framegraph run ...` commands of a graph's header comment, continuation lines joined."""
    commands, current = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if current:
            current += " " + text
        elif text.startswith("framegraph "):
            current = text
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1]
        else:
            commands.append(shlex.split(current, comments=True))
            current = ""
    return commands


@pytest.mark.parametrize("path", GRAPHS, ids=[p.stem for p in GRAPHS])
def test_every_usage_line_of_a_shipped_graph_validates(path: Path) -> None:
    commands = _usage_lines(path)
    assert commands, f"{path.name} shows no usage line"
    for argv in commands:
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        load_plan(path, overrides)


def test_two_sinks_writing_one_file_are_refused() -> None:
    """Every event would be written twice, under two event ids: consumers would count it twice."""
    issues = errors_of(
        graph(
            "{id: decode, op: decode.pyav, inputs: [sources]}",
            "{id: events, op: sink.jsonl, inputs: [decode], config: {mode: frames}}",
            '{id: events2, op: sink.jsonl, inputs: [decode], config: {path: "{graph}.jsonl"}}',
            '{id: other, op: sink.jsonl, inputs: [decode], config: {path: "other.jsonl"}}',
        )
    )
    (issue,) = [i for i in issues if "same file" in i]
    assert "nodes.2.config.path" in issue
    assert "node events2 would write the same file as node events ('{graph}.jsonl')" in issue
