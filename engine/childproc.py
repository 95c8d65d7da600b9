"""Servers that the tests and the load tests run as child processes on loopback.

A `ChildServer` starts a command, waits until it listens on its port (and, optionally, until
its log says it is ready), and can be killed, stalled (SIGSTOP: the server hangs with its
sockets open, as a frozen camera or broker does) and resumed. Output goes to a log file, never
a pipe: a full pipe would block the server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ChildServer:
    """One server process on its own free port, logging to `log_path`."""

    what = "server"  # for errors: "RTSP server", "tansu", ...

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], timeout_s: float, ready: Callable[[str], bool] | None = None) -> None:
        """Start `argv`; return once it listens and `ready(log text)` holds; raise with its log if not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if listening(self.port) and (ready is None or ready(self.log_tail(4000))):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.what} did not start on port {self.port}: {self.log_tail(800)}")

    def log_tail(self, chars: int) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL (a stalled server is woken first so that it dies at once) and reap it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server hangs; its clients see no more bytes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class TansuBroker(ChildServer):
    """A private Kafka-protocol broker (tansu, memory storage: a restart starts it empty)."""

    what = "tansu"

    def __init__(self, binary: Path, log_path: Path) -> None:
        super().__init__(log_path)
        self.binary = binary

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        url = f"tcp://{self.bootstrap}"
        args = [
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.spawn([str(self.binary), "broker", *args], timeout_s)
