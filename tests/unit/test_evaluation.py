"""`framegraph eval` without a model server: golden sets, the image source, scores, gate, rewiring.

A `test.oracle` detector answers from the labels (optionally missing a slice or adding false
boxes), so every figure the eval reports is known in advance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import FramegraphError
from engine.eval_cli import EXIT_GATE, EXIT_INVALID, add_parser, command
from engine.eval_gate import GateConfig, compare, load_gate, parse_thresholds
from engine.evaluation import DETECTIONS_NODE, LEAKS_NODE, eval_plan, evaluate, model_identities
from engine.frame import Detections, Frame, Item
from engine.golden_set import SMALL_FACE_PX, build_golden_set, file_sha256, load_golden_set
from engine.plan import load_plan
from engine.registry import Operator, register
from engine.spec import StrictModel
from engine.testing import CollectOperator, plan_from_yaml, run_graph

ROOT = Path(__file__).resolve().parents[2]
SLICES = ("clean", "blur", "small")


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    build_golden_set(out, 6, seed=0, width=1280, height=720, slices=SLICES)
    return out


class OracleConfig(StrictModel):
    golden: str
    miss_slices: list[str] = []
    false_boxes: int = 0


@register("test.oracle")
class Oracle(Operator[OracleConfig]):
    """Detections = the labels of the frame's image, except on `miss_slices`; plus false boxes."""

    Config = OracleConfig

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Frame)
        golden = load_golden_set(self.config.golden)
        image = next(im for im in golden.images if im.id == item.meta["image_id"])
        boxes = (
            golden.boxes_xyxy(image.id) if image.slice not in self.config.miss_slices else np.zeros((0, 4))
        )
        fake = np.asarray([[5, 5, 40, 40]] * self.config.false_boxes, np.float32).reshape(-1, 4)
        xyxy = np.concatenate([boxes, fake]).astype(np.float32)
        score = np.concatenate([np.full(len(boxes), 0.9), np.full(len(fake), 0.4)]).astype(np.float32)
        item.detections = Detections(xyxy, score, np.zeros(len(xyxy), np.int64))
        return (item,)


def graph_file(tmp_path: Path, golden: Path, oracle: str = "") -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(f"""
name: oracle
sources:
  - {{id: cam0, url: clip.mp4}}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: detect, op: test.oracle, inputs: [decode], config: {{golden: "{golden}"{oracle}}}}}
  - {{id: events, op: sink.jsonl, inputs: [detect]}}
""")
    return path


def test_golden_sets_are_reproducible_and_sliced(golden: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_golden_set(again, 6, seed=0, width=1280, height=720, slices=SLICES)
    assert file_sha256(again / "annotations.json") == file_sha256(golden / "annotations.json")
    assert file_sha256(again / "images/00002_small.png") == file_sha256(golden / "images/00002_small.png")
    g = load_golden_set(golden)
    assert [im.slice for im in g.images] == ["clean", "blur", "small"] * 2
    assert g.categories[0].name == "face"
    small = [a.bbox[3] for a in g.annotations if a.image_id in g.slices()["small"]]
    others = [a.bbox[3] for a in g.annotations if a.image_id not in g.slices()["small"]]
    assert max(small) <= SMALL_FACE_PX[1] + 0.5
    assert min(others) >= 59
    bad = json.loads((golden / "annotations.json").read_text())
    bad["annotations"][0]["image_id"] = 999
    (tmp_path / "annotations.json").write_text(json.dumps(bad))
    with pytest.raises(FramegraphError, match="unknown image_id 999"):
        load_golden_set(tmp_path)


async def test_image_source_streams_the_set_in_order_as_rgb(golden: Path) -> None:
    runtime, summary = await run_graph(f"""
name: images
sources: [{{id: g, url: "{golden}", op: source.images}}]
nodes: [{{id: out, op: test.collect, inputs: [sources]}}]
""")
    out = runtime.operator("out")
    assert isinstance(out, CollectOperator)
    frames = [f for f in out.items if isinstance(f, Frame)]
    g = load_golden_set(golden)
    assert [f.meta["image_id"] for f in frames] == [im.id for im in g.images]
    assert [f.meta["slice"] for f in frames] == [im.slice for im in g.images]
    assert frames[0].image.shape == (720, 1280, 3)
    # RGB, not OpenCV's BGR: the labelled face is the astronaut's (skin: red > blue)
    x0, y0, x1, y1 = g.boxes_xyxy(frames[0].meta["image_id"])[0].astype(int)
    face = frames[0].image[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    assert face[0] > face[2]
    assert summary["streams"]["g"]["frames_out"] == 6


async def test_a_perfect_detector_scores_one_and_a_blind_slice_scores_zero(
    golden: Path, tmp_path: Path
) -> None:
    plan = load_plan(graph_file(tmp_path, golden))
    report = await evaluate(plan, golden, output_dir=tmp_path / "out")
    det = report["detection"]
    assert det["overall"] | {"per_class": None} == {
        "precision": 1.0, "recall": 1.0, "map50": 1.0, "tp": det["overall"]["labels"], "fp": 0, "fn": 0,
        "labels": len(load_golden_set(golden).annotations), "per_class": None,
    }  # fmt: skip
    assert set(det["per_slice"]) == set(SLICES)
    assert report["images_missing"] == []
    assert report["images_degraded"] == []
    assert report["scored_node"] == "detect"
    assert report["latency_ms"]["p50"] is not None
    assert report["redaction"] is None
    assert report["models"] == []
    assert not list((tmp_path / "out").glob("*.jsonl"))  # the graph's sink was left out

    worse = await evaluate(
        load_plan(graph_file(tmp_path, golden, ", miss_slices: [blur], false_boxes: 1")), golden
    )
    blur, clean = worse["detection"]["per_slice"]["blur"], worse["detection"]["per_slice"]["clean"]
    assert blur["recall"] == 0.0
    assert blur["map50"] == 0.0
    assert clean["recall"] == 1.0
    assert clean["precision"] == pytest.approx(clean["tp"] / (clean["tp"] + 2))
    assert clean["map50"] == 1.0  # the false boxes score lower than every true one: AP keeps 1

    verdict = compare(worse, report, GateConfig())
    failed = {(c["scope"], c["metric"]) for c in verdict["failures"]}
    assert {("slice:blur", "recall"), ("slice:blur", "map50"), ("overall", "recall")} <= failed
    assert ("slice:clean", "precision") in failed
    assert ("slice:clean", "recall") not in failed
    assert compare(report, report, GateConfig())["passed"]


def test_cli_gate_exit_codes(golden: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))

    def run(*args: str | Path) -> int:
        return command(parser.parse_args(["eval", *map(str, args)]))

    base = tmp_path / "base.json"
    assert run(graph_file(tmp_path, golden), "--golden", golden, "--report", base) == 0
    assert run(graph_file(tmp_path, golden), "--golden", golden, "--baseline", base, "--gate") == 0
    worse = graph_file(tmp_path, golden, ", miss_slices: [small]")
    assert (
        run(worse, "--golden", golden, "--baseline", base, "--gate", "--report", tmp_path / "w.json")
        == EXIT_GATE
    )
    assert json.loads((tmp_path / "w.json").read_text())["gate"]["passed"] is False
    assert run(worse, "--golden", golden, "--baseline", base) == 0  # compared, not gated
    # a wider threshold lets the same regression through (recall lost on `small` only)
    loose = "recall=1,map50=1,precision=1"
    assert run(worse, "--golden", golden, "--baseline", base, "--gate", "--max-drop", loose) == 0
    assert run(worse, "--golden", golden, "--gate") == EXIT_INVALID  # --gate needs --baseline
    assert run(worse, "--golden", golden, "--max-drop", "recal=0.1") == EXIT_INVALID


def test_gate_thresholds_default_then_gate_json_then_command_line(golden: Path, tmp_path: Path) -> None:
    assert load_gate(tmp_path).max_drop == {"recall": 0.02, "map50": 0.02, "precision": 0.05}
    (tmp_path / "gate.json").write_text(json.dumps({"max_drop": {"recall": 0.1}, "scopes": ["overall"]}))
    gate = load_gate(tmp_path, max_drop="map50=0.3", max_rise="latency_p95_ms=50")
    assert gate.max_drop == {"recall": 0.1, "map50": 0.3, "precision": 0.05}
    assert gate.max_rise == {"leak_rate": 0.0, "latency_p95_ms": 50.0}
    assert gate.scopes == ["overall"]
    with pytest.raises(FramegraphError, match="expected NAME=VALUE"):
        parse_thresholds("recall", ("recall",))
    (tmp_path / "gate.json").write_text(json.dumps({"max_drop": {"f1": 0.1}}))
    with pytest.raises(FramegraphError, match="unknown metrics"):
        load_gate(tmp_path)


def test_a_baseline_from_another_golden_set_is_refused() -> None:
    report: dict[str, Any] = {"golden": {"sha256": "a" * 64}}
    with pytest.raises(FramegraphError, match="another golden set"):
        compare(report, {"golden": {"sha256": "b" * 64}}, GateConfig())


def test_eval_plan_bypasses_decoders_and_sinks_and_taps_before_redaction(golden: Path) -> None:
    plan = plan_from_yaml("""
name: r
sources: [{id: cam0, url: a.mp4}]
nodes:
  - {id: decode, op: decode.pyav, inputs: [sources]}
  - {id: pre, op: preprocess.cpu, inputs: [decode]}
  - {id: faces, op: test.collect, inputs: [pre]}
  - {id: redact, op: redact, inputs: [faces]}
  - {id: video, op: sink.jsonl, inputs: [redact]}
""")
    ep = eval_plan(plan, golden)
    assert (ep.node, ep.redact) == ("faces", "redact")
    ids = [n.spec.id for n in ep.plan.nodes]
    assert ids == ["pre", "faces", "redact", LEAKS_NODE, DETECTIONS_NODE]
    edges = {(e.src, e.dst) for e in ep.plan.edges}
    assert edges == {("cam0", "pre"), ("pre", "faces"), ("faces", "redact"), ("redact", LEAKS_NODE),
                     ("faces", DETECTIONS_NODE)}  # fmt: skip
    assert ep.plan.sources[0].spec.op == "source.images"
    with pytest.raises(FramegraphError, match="no such node"):
        eval_plan(plan, golden, node="video")


def test_reports_name_the_model_version_and_file_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version, content in (("1", b"model one"), ("2", b"model two")):
        (tmp_path / "centerface" / version).mkdir(parents=True)
        (tmp_path / "centerface" / version / "centerface.onnx").write_bytes(content)
    monkeypatch.setenv("FG_TRITON_MODEL_REPO", str(tmp_path))
    graph = ROOT / "graphs/face_detect.yaml"
    (latest,) = model_identities(load_plan(graph))
    assert (latest["model"], latest["version"], latest["version_pinned"]) == ("centerface", "2", False)
    (pinned,) = model_identities(load_plan(graph, ['nodes.detect.config.version="1"']))
    assert (pinned["version"], pinned["version_pinned"]) == ("1", True)
    assert pinned["files"][0]["sha256"] == file_sha256(tmp_path / "centerface/1/centerface.onnx")
    assert pinned["files"][0]["sha256"] != latest["files"][0]["sha256"]


def test_a_remote_servers_model_is_not_claimed_by_the_local_file_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "centerface" / "1").mkdir(parents=True)
    (tmp_path / "centerface" / "1" / "centerface.onnx").write_bytes(b"local copy")
    monkeypatch.setenv("FG_TRITON_MODEL_REPO", str(tmp_path))
    graph = ROOT / "graphs/face_detect.yaml"
    (remote,) = model_identities(load_plan(graph, ['nodes.detect.config.url="triton.prod:8001"']))
    assert (remote["served_by"], remote["files_checked"]) == ("triton.prod:8001", False)
    (local,) = model_identities(load_plan(graph, ['nodes.detect.config.url="127.0.0.1:8001"']))
    assert local["files_checked"] is True
    (started,) = model_identities(load_plan(graph, ['nodes.detect.config.url=""']))
    assert (started["served_by"], started["files_checked"]) == ("a local server the run started", True)


def test_eval_refuses_a_golden_set_with_missing_images(golden: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "annotations.json").write_text((golden / "annotations.json").read_text())
    with pytest.raises(FramegraphError, match="6 image"):
        asyncio.run(evaluate(load_plan(graph_file(tmp_path, golden)), broken))


def test_a_small_golden_frame_holds_only_faces_that_fit() -> None:
    """`make_golden.py --width 640 --height 384` failed (a 300 px face's head is taller than 384):
    face sizes are capped at what the frame holds, and every box lies inside it."""
    from engine.golden import golden_frames

    frames = golden_frames(0, 6, 640, 384)
    assert sum(len(boxes) for _, boxes in frames) >= 6
    for image, boxes in frames:
        assert image.shape == (384, 640, 3)
        assert (boxes[:, [0, 1]] >= 0).all()
        assert (boxes[:, 2] <= 640).all()
        assert (boxes[:, 3] <= 384).all()


async def test_the_leak_judge_does_not_count_a_withheld_frame_as_written() -> None:
    """redact passes a withheld frame on (covered, for its audit event); no video sink writes it,
    so the eval must count it withheld, not judge it as an output with no faces."""
    from engine.evaluation import LeakCollector, LeakConfig
    from engine.frame import Frame
    from engine.metrics import NodeMetrics
    from engine.registry import OperatorContext

    judge = LeakCollector(LeakConfig(), OperatorContext("leaks", NodeMetrics("leaks")))
    judge.detect = lambda image: np.zeros((0, 4), np.float32)  # type: ignore[method-assign]
    withheld = Frame(
        "cam0", 0, 0, 0, np.zeros((8, 8, 3), np.uint8), meta={"image_id": 1, "redaction": "withheld"}
    )
    written = Frame(
        "cam0", 1, 1, 0, np.zeros((8, 8, 3), np.uint8), meta={"image_id": 2, "redaction": "redacted"}
    )
    await judge.process(withheld)
    await judge.process(written)
    assert set(judge.found) == {2}
