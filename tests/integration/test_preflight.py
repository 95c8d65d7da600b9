"""`framegraph validate --connect` against real neighbours: a GStreamer RTSP server, a file, the
test Triton and the tansu broker. Every source is opened and every node set up; every failure
is listed (not only the first), nothing runs, and no credential is printed."""

from __future__ import annotations

import uuid
from pathlib import Path

from engine.childproc import free_port
from tests.integration.conftest import RtspServer
from tests.integration.kafka_support import shared_bootstrap
from tests.integration.test_cli import ROOT, framegraph

SECRET = "s3cret-Pa55"


def graph(
    tmp_path: Path, cams: list[str], triton_url: str, model: str, bootstrap: str, extra: str = ""
) -> Path:
    sources = "\n".join(f"  - {{id: cam{i}, url: '{url}'}}" for i, url in enumerate(cams))
    path = tmp_path / "preflight.yaml"
    path.write_text(
        f"""\
name: preflight
sources:
{sources}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: pre, op: preprocess.cpu, inputs: [decode], config: {{width: 640, height: 384}}}}
  - {{id: detect, op: infer.triton, inputs: [pre], config: {{url: '{triton_url}', model: {model}}}}}
  - {{id: faces, op: postprocess.centerface, inputs: [detect]}}
  - id: events
    op: sink.kafka
    inputs: [faces]
    config: {{bootstrap: '{bootstrap}', topic: preflight.{uuid.uuid4().hex[:8]}, connect_timeout_s: 3{extra}}}
"""
    )
    return path


def test_connect_describes_every_source_and_reaches_every_server(
    tmp_path: Path, rtsp_server: RtspServer, clip_720p: Path, triton_url: str
) -> None:
    cam = rtsp_server.url("astro").replace("rtsp://", f"rtsp://viewer:{SECRET}@")
    path = graph(tmp_path, [cam, str(clip_720p)], triton_url, "centerface", shared_bootstrap())
    result = framegraph(
        "validate", path, "--connect", "--set", f"nodes.events.config.spool_dir={tmp_path}/spool"
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert (
        f"ok     source cam0 (source.rtsp, rtsp://***@127.0.0.1:{rtsp_server.port}/astro): h264 1280x720"
        in out
    )
    assert "ok     source cam1 (source.file, " in out
    assert "ok     node detect (infer.triton): set up" in out
    assert "ok     node events (sink.kafka): brokers answer; topic 'preflight." in out
    assert SECRET not in out
    assert not (tmp_path / "spool").exists()  # the check started no publisher and made no spool


def test_connect_lists_every_failure_and_masks_credentials(
    tmp_path: Path, clip_720p: Path, triton_url: str
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video\x00" * 1000)
    cams = [
        f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/cam",  # nobody listens
        str(tmp_path / "missing.mp4"),
        str(garbage),
        str(clip_720p),  # the one good source
    ]
    sasl = f", security_protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, sasl_username: u, sasl_password: {SECRET}"
    path = graph(tmp_path, cams, triton_url, "centerfaze", f"127.0.0.1:{free_port()}", sasl)
    result = framegraph("validate", path, "--connect", "--timeout-s", "10")
    assert result.returncode == 2
    err = result.stderr
    assert "5 of 9 checks failed" in err, err
    assert "FAILED source cam0 (source.rtsp, rtsp://***@127.0.0.1:" in err
    assert "Connection refused" in err
    assert "FAILED source cam1 (source.file, " in err
    assert "No such file or directory" in err
    assert "FAILED source cam2 (source.file, " in err
    assert "FAILED node detect (infer.triton): " in err
    assert "model 'centerfaze'" in err
    assert "FAILED node events (sink.kafka): kafka 127.0.0.1:" in err
    assert ": connection refused" in err.split("FAILED node events")[1]  # nobody listens: said at once
    assert "ok     source cam3 (source.file, " in result.stdout  # a failure does not hide the rest
    assert "ok     node faces (postprocess.centerface)" in result.stdout
    assert SECRET not in result.stdout + err


def test_connect_checks_the_model_against_the_graph_and_makes_no_output(
    tmp_path: Path, clip_720p: Path, triton_url: str
) -> None:
    path = tmp_path / "faces.yaml"
    path.write_text(
        f"""\
name: faces
sources:
  - {{id: cam0, url: '{clip_720p}'}}
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: pre, op: preprocess.cpu, inputs: [decode], config: {{width: 640, height: 384}}}}
  - {{id: detect, op: infer.triton, inputs: [pre], config: {{url: '{triton_url}', model: centerface}}}}
  - {{id: faces, op: postprocess.centerface, inputs: [detect]}}
  - {{id: events, op: sink.jsonl, inputs: [faces]}}
"""
    )
    (ROOT / "out" / "faces.jsonl").unlink(missing_ok=True)
    ok = framegraph("validate", path, "--connect")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "trial inference of one 3x384x640 float32 frame: ok" in ok.stdout
    assert not (ROOT / "out" / "faces.jsonl").exists()  # the sink opened no file
    wrong_model = framegraph("validate", path, "--connect", "--set", "nodes.detect.config.model=textdet")
    assert wrong_model.returncode == 2
    assert (
        "FAILED node detect (infer.triton): model 'textdet' gives outputs ['sigmoid_0.tmp_0'], but node "
        "faces (postprocess.centerface) reads ['537', '538', '539', '540']" in wrong_model.stderr
    )
    odd_width = framegraph("validate", path, "--connect", "--set", "nodes.pre.config.width=641")
    assert odd_width.returncode == 2
    assert "a trial inference of one 3x384x641 float32 frame" in odd_width.stderr
    assert "multiples of 32" in odd_width.stderr
