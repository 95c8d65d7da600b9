"""Real services for the integration tier, started (idempotently) by the project's own scripts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.childproc import ChildServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


class TritonInstance:
    """A Triton server run by scripts/triton under its own name and ports."""

    def __init__(self, name: str, grpc_port: int | None = None) -> None:
        self.name = name
        self.grpc_port = grpc_port or free_port()
        self.env = {
            **os.environ,
            "FG_TRITON_NAME": name,
            "FG_TRITON_GRPC_PORT": str(self.grpc_port),
            "FG_TRITON_HTTP_PORT": str(free_port()),
            # the ONNX Runtime models only: they start in ~2 s, the torch one adds ~3 s to every
            # (re)start, and the fault tests restart servers against a clock
            "FG_TRITON_MODELS": "centerface textdet",
        }

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def __call__(self, action: str) -> None:
        subprocess.run([ROOT / "scripts/triton", action], env=self.env, check=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="session")
def triton_url() -> str:
    """The shared Triton server of scripts/services (started here if it is not running)."""
    subprocess.run([ROOT / "scripts/triton", "start"], check=True, cwd=ROOT, timeout=600)
    return read_env(ROOT / ".services/triton.env")["FG_TRITON_GRPC_URL"]


@pytest.fixture
def private_triton() -> Iterator[TritonInstance]:
    """A Triton of this test's own, which the test may kill and restart."""
    instance = TritonInstance(f"test-{os.getpid()}-{free_port()}")
    instance("start")
    try:
        yield instance
    finally:
        instance("stop")


class RtspServer(ChildServer):
    """A private RTSP server (scripts/rtsp_server.py) that a test may kill, hang and restart."""

    what = "RTSP server"

    def __init__(self, media_dir: Path, record_mounts: tuple[str, ...] = ()) -> None:
        super().__init__(media_dir.parent / f"rtsp-server-{id(self)}.log")
        self.media_dir = media_dir
        self.record_mounts = record_mounts  # mounts that accept pushed streams (RECORD)

    def url(self, stem: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{stem}"

    def start(self, timeout_s: float = 20.0) -> None:
        argv = ["/usr/bin/python3", str(ROOT / "scripts/rtsp_server.py"), "--media-dir", str(self.media_dir)]
        mounts = [arg for name in self.record_mounts for arg in ("--record-mount", name)]
        self.spawn([*argv, "--port", str(self.port), *mounts], timeout_s, ready=lambda log: "ready" in log)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
def rtsp_server(tmp_path: Path, clip_720p: Path) -> Iterator[RtspServer]:
    """A private RTSP server serving the 720p astronaut clip at /astro."""
    media = tmp_path / "rtsp-media"
    media.mkdir()
    (media / "astro.mp4").write_bytes(clip_720p.read_bytes())
    server = RtspServer(media)
    server.start()
    try:
        yield server
    finally:
        server.kill()
