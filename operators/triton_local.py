"""An embedded Triton server for graphs that name no URL: started for the run, stopped after.

It runs `scripts/triton` (the bundled `tritonserver` from the nvidia-pytriton wheel) on free
ports under a name of its own, so it never disturbs a server the user runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from pathlib import Path

from engine.errors import InferenceUnavailable

log = logging.getLogger("framegraph.triton")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalTriton:
    """One embedded server per process, shared by every node that needs it (reference counted)."""

    _users = 0
    _url: str | None = None
    _lock: asyncio.Lock | None = None

    def __init__(self, model_repo: Path | None = None) -> None:
        self.name = f"embedded-{os.getpid()}"
        self.model_repo = model_repo or ROOT / "triton_models"
        self.script = Path(os.environ.get("FG_TRITON_SCRIPT", ROOT / "scripts/triton"))

    async def _call(self, action: str, env: dict[str, str]) -> tuple[int, str]:
        # Output goes to a file, not a pipe: the server the script leaves running could inherit
        # the pipe (uvloop does not close it) and then the read would never see its end.
        with tempfile.TemporaryFile() as out:
            proc = await asyncio.create_subprocess_exec(
                str(self.script),
                action,
                env={**os.environ, **env},
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
            code = await proc.wait()
            out.seek(0)
            return code, out.read().decode(errors="replace")

    async def acquire(self) -> str:
        """Start the server if this process has none yet; return its gRPC address."""
        cls = LocalTriton
        cls._lock = cls._lock or asyncio.Lock()
        async with cls._lock:
            if cls._url is None:
                grpc_port = _free_port()
                env = {
                    "FG_TRITON_NAME": self.name,
                    "FG_TRITON_GRPC_PORT": str(grpc_port),
                    "FG_TRITON_HTTP_PORT": str(_free_port()),
                    "FG_TRITON_MODEL_REPO": str(self.model_repo),
                }
                log.warning("no Triton URL in the graph: starting a local Triton (%s)", self.name)
                code, out = await self._call("start", env)
                if code != 0:
                    raise InferenceUnavailable(f"the local Triton server did not start:\n{out[-2000:]}")
                cls._url = f"127.0.0.1:{grpc_port}"
            cls._users += 1
            return cls._url

    async def release(self) -> None:
        """Stop the server when its last user is done."""
        cls = LocalTriton
        if cls._lock is None:
            return
        async with cls._lock:
            cls._users -= 1
            if cls._users <= 0 and cls._url is not None:
                await self._call("stop", {"FG_TRITON_NAME": self.name})
                cls._url = None
                cls._users = 0
