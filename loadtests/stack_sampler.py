"""Where a process's threads spend their time: every thread's Python stack, sampled in-process.

py-spy would say it better, but it needs ptrace, which containers (the lent GPU machines among
them) often deny. `sys._current_frames()` needs nothing: a daemon thread takes every thread's
innermost frames every `interval_s` and counts (thread group, stack) pairs. A thread waiting in
a lock, a queue, a selector or a sleep is counted as idle, apart. C code (CUDA calls, NVDEC,
numpy) shows as the Python line that called it. The sampler needs the GIL to sample, so under
heavy GIL contention it samples less often: `samples` against the wall time says how much less.

    with StackSampler() as sampler:
        ...                      # the work
    print(sampler.figures())     # {"samples": ..., "busy_threads": {...}, "top": [...]}
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1])
# the innermost frame of a waiting thread: (file name ends with, function)
IDLE = {
    ("threading.py", "wait"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("queue.py", "get"),
    ("selectors.py", "select"),
    ("futures/thread.py", "_worker"),  # a pool thread waiting for work (SimpleQueue.get, in C)
    ("asyncio/base_events.py", "_run_once"),
    ("asyncio/runners.py", "run"),  # uvloop waits (and runs its own C) below this frame
}


def thread_group(name: str) -> str:
    """Thread names without their numbers: 'decode-pinned_3' and 'decode-pinned_7' are one group."""
    return re.sub(r"[-_]?\d+", "", name) or name


def short_path(path: str) -> str:
    """A package's file from its package down, a repository file from the repository down."""
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1]
    if path.startswith(ROOT):
        return path[len(ROOT) + 1 :]
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


class StackSampler:
    """Counts (thread group, innermost `depth` frames) every `interval_s` until stopped."""

    def __init__(self, interval_s: float = 0.005, depth: int = 4) -> None:
        self.interval_s = interval_s
        self.depth = depth
        self.samples = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        self.busy: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _stack(self, frame: FrameType | None) -> tuple[str, bool]:
        """'file:line func <- caller ...' of the innermost frames, and whether the thread waits."""
        parts: list[str] = []
        idle = False
        first = True
        while frame is not None and len(parts) < self.depth:
            code = frame.f_code
            path = short_path(code.co_filename)
            if first:
                idle = any(path.endswith(f) and code.co_name == fn for f, fn in IDLE) or code.co_name in (
                    "sleep",
                    "_probe_gil",
                )
                first = False
            parts.append(f"{path}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        return " <- ".join(parts), idle

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                group = thread_group(names.get(ident, "?"))
                stack, idle = self._stack(frame)
                self.seen[group] += 1
                if not idle:
                    self.busy[group] += 1
                    self.counts[(group, stack)] += 1
            self.samples += 1

    def __enter__(self) -> StackSampler:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.wall_s = time.perf_counter() - self._started

    def figures(self, top: int = 15) -> dict[str, Any]:
        """Samples taken (and expected); per thread group, how many of its threads were busy on
        average (not waiting: running or wanting the GIL); the stacks they were busy in."""
        n = max(1, self.samples)
        return {
            "samples": self.samples,
            "expected_samples": int(self.wall_s / self.interval_s),
            "busy_threads": {
                g: round(self.busy[g] / n, 3) for g in sorted(self.seen, key=lambda g: -self.busy[g])
            },
            "top": [
                {"thread": g, "busy_threads": round(c / n, 3), "stack": s}
                for (g, s), c in self.counts.most_common(top)
            ],
        }
