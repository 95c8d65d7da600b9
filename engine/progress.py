"""A live progress line per stream (fps, latency, drops) while a graph runs."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from engine.metrics import Metrics


def progress_lines(metrics: Metrics, interval_s: float) -> list[str]:
    """One line per stream for the last interval: fps, p95 latency, total drops."""
    lines = []
    for sid, s in sorted(metrics.streams.items()):
        fps = s.take_window() / interval_s
        p95 = s.latency.percentiles(s.latency.take_recent())["p95"]
        latency = f"{p95:.0f} ms" if p95 is not None else "-"
        lines.append(
            f"[{sid}] {fps:6.1f} fps  p95 {latency:>8}  frames {s.frames_out}  "
            f"dropped {metrics.dropped_for(sid)}"
        )
    return lines


async def report_progress(metrics: Metrics, interval_s: float, out: TextIO = sys.stderr) -> None:
    """Print progress lines every `interval_s` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        for line in progress_lines(metrics, interval_s):
            print(line, file=out, flush=True)
