"""Real services for the integration tier, started (idempotently) by the project's own scripts."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
