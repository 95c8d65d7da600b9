"""A user's own operator in a plugin (`--plugin MODULE` or `--plugin path/to/file.py`): validate,
schema, run (also in K processes) and eval take it; a plugin that is missing, does not import, or
fails in its setup is one clear line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cli import framegraph

PLUGIN = '''\
"""A user's plugin: a `crowd` event when a frame has at least `min_count` detections."""
from collections.abc import Sequence

from pydantic import Field

from engine.frame import Frame, Item
from engine.registry import Operator, register
from engine.spec import StrictModel


class CrowdConfig(StrictModel):
    min_count: int = Field(1, ge=1, description="Detections that make a crowd.")
    fail_in_setup: bool = False


@register("my.crowd")
class Crowd(Operator[CrowdConfig]):
    Config = CrowdConfig
    consumes, produces = "frames", "same"

    async def setup(self) -> None:
        if self.config.fail_in_setup:
            raise RuntimeError("the crowd model is missing")

    async def process(self, item: Item) -> Sequence[Item]:
        assert isinstance(item, Frame)
        item.meta["crowd_checked"] = True
        return (item,)
'''


def graph(tmp_path: Path, clip: Path, crowd_config: str = "{}") -> Path:
    path = tmp_path / "crowd.yaml"
    path.write_text(
        "name: crowd\n"
        f"sources:\n  - {{id: cam0, url: '{clip}'}}\n  - {{id: cam1, url: '{clip}'}}\n"
        "nodes:\n"
        "  - {id: decode, op: decode.pyav, inputs: [sources]}\n"
        f"  - {{id: crowd, op: my.crowd, inputs: [decode], config: {crowd_config}}}\n"
        "  - {id: out, op: sink.jsonl, inputs: [crowd], config: {path: frames.jsonl}}\n"
    )
    return path


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "crowd_ops.py"
    path.write_text(PLUGIN)
    return path


def test_a_plugin_file_is_validated_put_in_the_schema_and_run_in_one_and_two_processes(
    plugin_file: Path, clip_ts: Path, tmp_path: Path
) -> None:
    g = graph(tmp_path, clip_ts)
    checked = framegraph("validate", g, "--plugin", plugin_file)
    assert checked.returncode == 0, checked.stderr
    schema = json.loads(framegraph("schema", "--plugin", plugin_file).stdout)
    assert "my.crowd" in json.dumps(schema)
    for processes in ("1", "2"):
        out = tmp_path / f"out{processes}"
        ran = framegraph(
            "run", g, "--plugin", plugin_file, "--processes", processes, "--output", out,
            "--progress-interval-s", "0",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "node crowd: in 120 out 120" in ran.stdout
    typo = framegraph("validate", graph(tmp_path, clip_ts, "{min_cnt: 2}"), "--plugin", plugin_file)
    assert typo.returncode == 2
    assert "nodes.1.config.min_cnt: unknown field; did you mean 'min_count'?" in typo.stderr


def test_a_plugin_module_is_found_in_the_working_directory_by_the_console_script(
    plugin_file: Path, clip_ts: Path, tmp_path: Path
) -> None:
    script = Path(sys.executable).parent / "framegraph"
    done = subprocess.run(
        [str(script), "validate", str(graph(tmp_path, clip_ts)), "--plugin", "crowd_ops"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("plugin", "body", "message"),
    [
        (
            "nosuch_ops",
            None,
            "plugin 'nosuch_ops' not found: no module 'nosuch_ops' in the working directory",
        ),
        ("{tmp}/gone.py", None, "plugin '{tmp}/gone.py' not found: no such file"),
        ("{tmp}/broken.py", "def f(:\n", "plugin '{tmp}/broken.py' failed to import: SyntaxError: "),
        (
            "{tmp}/deps.py",
            "import not_installed_dep\n",
            "ModuleNotFoundError: No module named 'not_installed_dep'",
        ),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_line(
    plugin: str, body: str | None, message: str, clip_ts: Path, tmp_path: Path
) -> None:
    plugin = plugin.replace("{tmp}", str(tmp_path))
    if body is not None:
        Path(plugin).write_text(body)
    for command in ("validate", "run"):
        done = framegraph(command, graph(tmp_path, clip_ts), "--plugin", plugin)
        assert done.returncode == 2
        assert message.replace("{tmp}", str(tmp_path)) in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_plugin_failing_in_its_setup_stops_the_run_with_one_line(
    plugin_file: Path, clip_ts: Path, tmp_path: Path
) -> None:
    g = graph(tmp_path, clip_ts, "{fail_in_setup: true}")
    done = framegraph("run", g, "--plugin", plugin_file, "--output", tmp_path / "out")
    assert done.returncode == 1
    assert (
        "run failed: node crowd (my.crowd): setup failed: RuntimeError: the crowd model is missing"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_a_plugin_file_named_like_a_framegraph_package_does_not_replace_it(tmp_path: Path) -> None:
    """A user's `operators.py` must not shadow framegraph's `operators` package."""
    mine = tmp_path / "operators.py"
    mine.write_text(PLUGIN)
    done = framegraph("validate", "graphs/face_detect.yaml", "--plugin", mine)
    assert done.returncode == 0, done.stderr


def test_a_plugin_module_missing_a_dependency_names_the_dependency(tmp_path: Path) -> None:
    (tmp_path / "nodep_ops.py").write_text("import nodep\n")  # 'nodep' is a prefix of the plugin's name
    script = Path(sys.executable).parent / "framegraph"
    done = subprocess.run(
        [str(script), "schema", "--plugin", "nodep_ops"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "plugin 'nodep_ops' failed to import: ModuleNotFoundError: No module named 'nodep'" in done.stderr
