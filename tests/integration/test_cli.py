"""The `framegraph` command as a user runs it: validate, run with --set, summary JSON, schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def framegraph(
    *args: str | Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env_extra} if env_extra else None,
    )


def test_validate_accepts_every_shipped_graph() -> None:
    for graph in sorted((ROOT / "graphs").glob("*.yaml")):
        result = framegraph("validate", graph)
        assert result.returncode == 0, f"{graph.name}: {result.stderr}"


def test_validate_rejects_with_file_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "graphs/decode_only.yaml").read_text().replace("op: sink.null", "op: sink.nul"))
    result = framegraph("validate", bad)
    assert result.returncode == 2
    assert f"{bad}:13: nodes.1.op: unknown operator 'sink.nul'; did you mean 'sink.null'?" in result.stderr


def test_run_with_set_writes_summary_json(clip_720p: Path, tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    result = framegraph(
        "run",
        "graphs/frames_jsonl.yaml",
        "--set",
        f"sources.0.url={clip_720p}",
        "--set",
        "sources.cam0.config.realtime=false",
        "--max-frames",
        "20",
        "--output",
        tmp_path,
        "--summary-json",
        summary_path,
        "--progress-interval-s",
        "0",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["streams"]["cam0"]["frames_out"] == 20
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["nodes"]["decode"]["in"] == 20
    lines = (tmp_path / "frames_jsonl.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(20))
    assert "stream cam0 [ok]: 20 frames read, 20 out at events" in result.stdout


def test_run_prints_progress_per_stream(clip_720p: Path, tmp_path: Path) -> None:
    result = framegraph(
        "run",
        "graphs/frames_jsonl.yaml",
        "--set",
        f"sources.0.url={clip_720p}",
        "--max-frames",
        "45",
        "--output",
        tmp_path,
        "--progress-interval-s",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("[cam0]")]
    assert progress
    assert "fps" in progress[0]
    assert "dropped" in progress[0]


def test_run_on_a_camera_password_never_leaks(tmp_path: Path) -> None:
    result = framegraph(
        "run",
        "graphs/frames_jsonl.yaml",
        "--set",
        "sources.0.url=rtsp://admin:s3cret@127.0.0.1:1/x",
        "--set",
        "sources.0.config={max_reconnects: 0, open_timeout_s: 1}",
        "--output",
        tmp_path,
        "--progress-interval-s",
        "0",
        "--log-level",
        "INFO",
    )
    assert "s3cret" not in result.stdout + result.stderr
    assert "rtsp://***@127.0.0.1:1/x" in result.stderr


def test_schema_is_json_schema_of_graph_files() -> None:
    result = framegraph("schema")
    schema = json.loads(result.stdout)
    assert {"sources", "nodes", "name"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_validate_connect_names_a_missing_model(triton_url: str, clip_720p: Path, tmp_path: Path) -> None:
    where = ["--set", f"nodes.detect.config.url={triton_url}", "--set", f"sources.0.url={clip_720p}"]
    result = framegraph(
        "validate",
        "graphs/face_detect.yaml",
        "--connect",
        *where,
        "--set",
        "nodes.detect.config.model=centerfaze",
    )
    assert result.returncode == 2
    assert "model 'centerfaze' (version latest) is not available" in result.stderr
    assert "models there: centerface, centerface_torch, textdet" in result.stderr
    assert "1 of 6 checks failed" in result.stderr  # the source and the other nodes are fine
    ok = framegraph("validate", "graphs/face_detect.yaml", "--connect", *where)
    assert ok.returncode == 0, ok.stderr
    gone = tmp_path / "gone.mp4"
    missing = framegraph(
        "validate", "graphs/face_detect.yaml", "--connect", *where[:2], "--set", f"sources.0.url={gone}"
    )
    assert missing.returncode == 2  # a source that cannot be opened fails the check, named
    assert f"FAILED source cam0 (source.file, {gone}): cam0: cannot open" in missing.stderr


STAGE_P95 = 'framegraph_stage_ms{graph="frames_jsonl",kind="work",node="decode",quantile="p95"}'


def test_metrics_are_exposed_for_prometheus(clip_720p: Path, tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            "graphs/frames_jsonl.yaml",
            "--set",
            f"sources.0.url={clip_720p}",
            "--set",
            "sources.0.config.loop=true",  # runs until terminated: a 2 s clip may end before a scrape
            "--output",
            str(tmp_path),
            "--progress-interval-s",
            "0",
            "--metrics-port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = ""
        for _ in range(300):  # a loaded machine can take a while to start the run
            time.sleep(0.1)
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            except OSError:
                continue
            # stage percentiles appear after the first frame counts (they need samples): wait for both
            if (
                'framegraph_frames_out_total{graph="frames_jsonl",stream="cam0"}' in body
                and STAGE_P95 in body
            ):
                break
        assert 'framegraph_frames_in_total{graph="frames_jsonl",stream="cam0"}' in body
        assert STAGE_P95 in body
    finally:
        proc.terminate()
        proc.wait(10)
