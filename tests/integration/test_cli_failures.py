"""`framegraph` when things go wrong: failed sources exit 4 and say why, bad arguments and taken
ports get one clear line (never a traceback), a worker's failed stream shows up in `streams ls`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.childproc import free_port
from tests.integration.test_cli import ROOT, framegraph

EXIT_STREAMS_FAILED = 4
QUIET = ("--progress-interval-s", "0")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def unreadable(kind: str, tmp_path: Path, clip: Path) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "truncated":
        path.write_bytes(clip.read_bytes()[:3000])
    elif kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": never written


@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "empty"])
def test_run_exits_4_and_names_a_source_that_never_opened(kind: str, clip_720p: Path, tmp_path: Path) -> None:
    path = unreadable(kind, tmp_path, clip_720p)
    summary_path = tmp_path / "summary.json"
    result = framegraph(
        "run", "graphs/decode_only.yaml", "--set", f"sources.0.url={path}", "--output", tmp_path,
        "--summary-json", summary_path, *QUIET,
    )  # fmt: skip
    assert result.returncode == EXIT_STREAMS_FAILED, result.stderr
    cam0 = json.loads(summary_path.read_text())["streams"]["cam0"]
    assert cam0["status"] == "failed"
    assert cam0["error"].startswith(f"cam0: cannot open {path}: ")
    assert result.stdout.splitlines()[-1] == f"failed streams: cam0 ({cam0['error']})"
    assert "Traceback" not in result.stderr


def test_run_with_processes_exits_4_and_says_why_fewer_processes(tmp_path: Path) -> None:
    result = framegraph(
        "run", "graphs/decode_only.yaml", "--set", f"sources.0.url={tmp_path / 'nope.mp4'}",
        "--processes", "2", "--output", tmp_path, *QUIET,
    )  # fmt: skip
    assert result.returncode == EXIT_STREAMS_FAILED, result.stderr
    assert "1 process, sources per process: 1 (not 2: the graph has 1 source and each process needs one)" in (
        result.stderr
    )
    assert "failed streams: cam0 (cam0: cannot open" in result.stdout


def test_run_exits_4_when_an_rtsp_source_gives_up(tmp_path: Path) -> None:
    result = framegraph(
        "run", "graphs/decode_only.yaml", "--set", "sources.0.url=rtsp://admin:s3cret@127.0.0.1:9/x",
        "--set", "sources.0.config={max_reconnects: 2, open_timeout_s: 1, backoff_initial_s: 0.05}",
        "--output", tmp_path, *QUIET,
    )  # fmt: skip
    assert result.returncode == EXIT_STREAMS_FAILED, result.stderr
    assert (
        "failed streams: cam0 (cam0: gave up after 2 reconnects (last: cannot open rtsp://***@127.0.0.1:9/x"
        in (result.stdout)
    )
    assert "s3cret" not in result.stdout + result.stderr


def test_a_refused_rtsp_push_fails_the_run_and_says_why(clip_720p: Path, tmp_path: Path) -> None:
    graph = tmp_path / "push.yaml"
    graph.write_text(
        "name: push\n"
        f"sources:\n  - {{id: cam0, url: '{clip_720p}'}}\n"
        "nodes:\n"
        "  - {id: decode, op: decode.pyav, inputs: [sources]}\n"
        "  - {id: push, op: sink.rtsp, inputs: [decode], queue: {size: 128}, config: "
        "{url: 'rtsp://pub:hunter2@127.0.0.1:9/out', require_redaction: false, realtime: false, retry_s: 60}}\n"
    )
    result = framegraph("run", graph, "--output", tmp_path, *QUIET)
    assert result.returncode == EXIT_STREAMS_FAILED, result.stderr
    line = result.stdout.splitlines()[-1]
    assert line.startswith(
        "failing nodes: push (failed all 60 items it got: rtsp_unavailable 60; last error: "
    ), line
    assert result.stderr.count("cam0: RTSP push failed:") == 1  # once, not once per retry
    assert "hunter2" not in result.stdout + result.stderr


def test_a_file_that_ends_is_ok_and_exits_0(clip_720p: Path, tmp_path: Path) -> None:
    result = framegraph(
        "run", "graphs/decode_only.yaml", "--set", f"sources.0.url={clip_720p}", "--output", tmp_path, *QUIET
    )
    assert result.returncode == 0, result.stderr
    assert "  stream cam0 [ok]: 60 frames read, 60 out at sink, none dropped;" in result.stdout
    assert "  source cam0: 60 frames emitted" in result.stdout
    assert "failed streams" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-level", "bogus"], "argument --log-level: invalid choice: 'BOGUS'"),
        (["--max-frames", "0"], "argument --max-frames: must be 1 or more, got 0"),
        (["--max-frames", "-5"], "argument --max-frames: must be 1 or more, got -5"),
        (["--summary-json", "/tmp"], "--summary-json /tmp is a directory: give a file path"),
    ],
)
def test_bad_run_arguments_are_one_clear_error(args: list[str], message: str) -> None:
    result = framegraph("run", "graphs/decode_only.yaml", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_metrics_port_is_named(taken_port: int, clip_720p: Path, tmp_path: Path) -> None:
    result = framegraph(
        "run", "graphs/decode_only.yaml", "--set", f"sources.0.url={clip_720p}", "--output", tmp_path,
        "--metrics-port", str(taken_port), *QUIET,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        f"run failed: --metrics-port {taken_port}: cannot serve on 127.0.0.1:{taken_port}: "
        "the port is already in use"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_on_a_taken_api_port_says_so_before_claiming_to_serve(
    taken_port: int, tmp_path: Path
) -> None:
    result = framegraph(
        "worker", "graphs/decode_only.yaml", "--api-port", str(taken_port), "--output", tmp_path
    )
    assert result.returncode == 1
    assert f"--api-port {taken_port}: cannot serve on 127.0.0.1:{taken_port}: the port is already in use" in (
        result.stderr
    )
    assert "API on" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ls", "--api", "http://127.0.0.1:{port}"], 1, "cannot reach the API at http://127.0.0.1:{port}"),
        (["ls", "--api", "notaurl"], 2, "--api must be an http:// or https:// URL, got 'notaurl'"),
        (["add", "cam9", "--url", "x.mp4", "--config", "{bad"], 2, "--config is not valid JSON"),
        (["add", "cam9", "--url", "x.mp4", "--config", "[1]"], 2, "--config must be a JSON object"),
    ],
)
def test_streams_client_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    port = str(free_port())  # nothing listens there
    result = framegraph("streams", *[a.replace("{port}", port) for a in args])
    assert result.returncode == code
    assert message.replace("{port}", port) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_worker_stream_that_cannot_open_is_failed_in_streams_ls(clip_ts: Path, tmp_path: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker", "graphs/decode_only.yaml", "--api-port", str(port),
             "--lease-ttl-s", "1", "--output", str(tmp_path), "--log-level", "info"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        missing = tmp_path / "nope.mp4"
        deadline = time.monotonic() + 60
        while framegraph("streams", "ls", "--api", api).returncode != 0:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert f"API on {api}" in log_path.read_text()
        added = framegraph("streams", "add", "camx", "--url", str(missing), "--api", api)
        assert added.returncode == 0, added.stderr
        streams: dict[str, dict[str, object]] = {}
        while streams.get("camx", {}).get("state") != "failed":
            assert time.monotonic() < deadline, streams
            listed = framegraph("streams", "ls", "--api", api, "--json")
            streams = {s["id"]: s for s in json.loads(listed.stdout)}
        assert streams["camx"]["error"] == f"camx: cannot open {missing}: No such file or directory"
        table = framegraph("streams", "ls", "--api", api).stdout.splitlines()  # what a person reads
        assert table[0].split()[:3] == ["ID", "STATE", "OWNER"]
        row = next(i for i, line in enumerate(table) if line.startswith("camx "))
        assert table[row].split()[1] == "failed"
        error_line = f"  error: camx: cannot open {missing}: No such file or directory (tried again in "
        assert table[row + 1].startswith(error_line), table[row + 1]
        again = framegraph("streams", "add", "camx", "--url", str(missing), "--api", api)
        assert again.returncode == 1
        assert again.stderr.strip() == "framegraph streams add: 409: stream 'camx' exists; PUT updates it"
        bad = framegraph(
            "streams", "update", "camx", "--url", str(clip_ts), "--config", '{"lop": 1}', "--api", api
        )
        assert bad.returncode == 1
        assert bad.stderr.startswith("framegraph streams update: 422: config.lop: unknown field"), bad.stderr
        fixed = framegraph("streams", "update", "camx", "--url", str(clip_ts), "--api", api)
        assert fixed.returncode == 0, fixed.stderr
        while streams["camx"]["state"] not in ("running", "ended"):  # tried at once, not in 60 s
            assert time.monotonic() < deadline, streams
            time.sleep(0.2)
            streams = {
                s["id"]: s for s in json.loads(framegraph("streams", "ls", "--api", api, "--json").stdout)
            }
        removed = framegraph("streams", "rm", "camx", "--api", api)
        assert (removed.returncode, removed.stdout.strip()) == (0, "removed camx")
    finally:
        worker.terminate()
        worker.wait(20)


def test_a_worker_runs_the_graphs_own_stream_once_with_every_frame(clip_ts: Path, tmp_path: Path) -> None:
    """The worker claims the graph's own source while its nodes are still being set up: the
    stream must be read once and every frame must reach the sink (it was read twice, none out)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with (tmp_path / "worker.log").open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker", "graphs/decode_only.yaml", "--set",
             f"sources.0.url={clip_ts}", "--api-port", str(port), "--lease-ttl-s", "1",
             "--output", str(tmp_path)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        streams: dict[str, dict[str, object]] = {}
        while streams.get("cam0", {}).get("state") != "ended":
            assert time.monotonic() < deadline, (streams, (tmp_path / "worker.log").read_text())
            time.sleep(0.3)
            listed = framegraph("streams", "ls", "--api", api, "--json")
            if listed.returncode == 0:
                streams = {s["id"]: s for s in json.loads(listed.stdout)}
        cam = streams["cam0"]
        assert (cam["frames_in"], cam["frames_out"], cam["dropped"]) == (60, 60, 0), cam
    finally:
        worker.terminate()
        worker.wait(20)


def test_a_triton_address_with_credentials_and_no_scheme_is_masked(clip_ts: Path, tmp_path: Path) -> None:
    """gRPC takes `user:password@host:port` without a scheme: a failure must not print it."""
    env = {"FG_TRITON_GRPC_URL": "tritonuser:TriSecret@127.0.0.1:1"}
    run = framegraph(
        "run", "graphs/face_detect.yaml", "--set", f"sources.0.url={clip_ts}", "--output", tmp_path, *QUIET,
        env_extra=env,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "run failed: node detect: Triton at ***@127.0.0.1:1 does not answer" in run.stderr
    checked = framegraph(
        "validate", "graphs/face_detect.yaml", "--set", f"sources.0.url={clip_ts}", "--connect",
        "--timeout-s", "5", env_extra=env,
    )  # fmt: skip
    assert checked.returncode == 2
    assert "FAILED node detect (infer.triton): node detect: Triton at ***@127.0.0.1:1" in checked.stderr
    for result in (run, checked):
        assert "TriSecret" not in result.stdout + result.stderr


def test_a_model_that_refuses_every_frame_fails_the_run_and_says_why(
    triton_url: str, clip_ts: Path, tmp_path: Path
) -> None:
    """A size CenterFace refuses (not multiples of 32): every frame degrades; that must not pass
    for 'no faces' with exit 0."""
    result = framegraph(
        "run", "graphs/face_detect.yaml", "--set", f"sources.0.url={clip_ts}",
        "--set", f"nodes.detect.config.url={triton_url}",
        "--set", "nodes.preprocess.config={width: 330, height: 190}", "--output", tmp_path, *QUIET,
    )  # fmt: skip
    assert result.returncode == EXIT_STREAMS_FAILED, result.stderr
    assert "60 degraded (no inference: passed on without detections)" in result.stdout
    assert result.stdout.splitlines()[-1].startswith(
        "failing nodes: detect (failed all 60 items it got: degraded_frames 60; last error: centerface: "
    ), result.stdout
    assert "multiples of 32" in result.stdout.splitlines()[-1]
