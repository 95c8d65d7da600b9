"""`framegraph eval`'s exit codes match its help: 2 for a bad golden set, graph, baseline or option
(never 1, which is for a run that failed), and every file that cannot be read is named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from engine.eval_cli import EXIT_INVALID, add_parser, command
from engine.golden_set import build_golden_set

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    build_golden_set(out, 2, seed=0, width=1280, height=720, slices=("clean",))
    return out


def run_eval(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return command(parser.parse_args(["eval", *map(str, argv)]))


def test_a_golden_set_that_does_not_exist_is_an_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent"
    assert run_eval(ROOT / "graphs/face_detect.yaml", "--golden", missing) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("eval: golden set: ")
    assert str(missing / "annotations.json") in err
    assert "not found" in err


def test_a_graph_with_nothing_to_score_is_an_invalid_input(
    golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_eval(ROOT / "graphs/decode_only.yaml", "--golden", golden) == EXIT_INVALID
    assert "no node whose detections could be scored" in capsys.readouterr().err


def test_a_node_option_naming_no_node_is_an_invalid_input(
    golden: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_eval(ROOT / "graphs/face_detect.yaml", "--golden", golden, "--node", "nosuch") == EXIT_INVALID
    assert "--node 'nosuch': no such node" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "says"),
    [("notjson", "not JSON (Expecting value"), ("[1, 2]", "not an eval report"), (None, "not found")],
)
def test_a_bad_baseline_is_an_invalid_input_and_named(
    golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
) -> None:
    baseline = tmp_path / "base.json"
    if content is not None:
        baseline.write_text(content)
    assert (
        run_eval(ROOT / "graphs/face_detect.yaml", "--golden", golden, "--baseline", baseline) == EXIT_INVALID
    )
    err = capsys.readouterr().err
    assert f"eval: baseline {baseline}: {says}" in err


def test_an_invalid_golden_set_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "annotations.json").write_text(json.dumps({"images": "nope"}))
    assert run_eval(ROOT / "graphs/face_detect.yaml", "--golden", tmp_path) == EXIT_INVALID
    assert f"golden set: {tmp_path / 'annotations.json'} is invalid" in capsys.readouterr().err
