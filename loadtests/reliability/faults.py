"""The chaos schedule: each fault injected while the cameras stream, and recovery measured.

Faults, one after another with `gap_s` between them (each on its own servers, never shared):
- rtsp_restart: the main RTSP server killed and started again (its cameras reconnect);
- camera_stall: the stall camera's own RTSP server SIGSTOPped, then SIGCONTinued;
- broker_down: the broker killed, down for `broker_outage_s`, started again (empty: memory storage);
- triton_restart: the private Triton stopped and started again (frames meanwhile are covered);
- corrupt_packets: throughout, one camera's file carries corrupted bytes (windows: FFmpeg's errors);
- stream_churn: throughout, a camera added and removed every few seconds (add_stream/remove_stream);
- redis_restart: skipped, with a note, unless a worker (Redis registry) is part of the run.
Recovery: from the fault's end to the first moment the affected stream's last 1 s held
RECOVERED_FPS good frames (the probe's counts); 0 when it never fell below.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtests.reliability.options import HELD_FPS, RECOVERED_FPS
from loadtests.reliability.probe import BIN_S

log = logging.getLogger("reliability.faults")


@dataclass
class Fault:
    """One injected fault: when (seconds on the run's clock), which streams it hits, what it measured."""

    kind: str
    start_s: float
    end_s: float
    affected: list[str]
    note: str = ""
    recovery_s: dict[str, float | None] = field(default_factory=dict)  # to RECOVERED_FPS
    min_fps: dict[str, float] = field(default_factory=dict)
    baseline_fps: dict[str, float] = field(default_factory=dict)  # good fps in the 3 s before
    recovery_to_baseline_s: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def measure(self, stream_id: str, bins: list[int], limit_s: float) -> None:
        """Recovery of one affected stream: to RECOVERED_FPS and to 90 % of its own rate before."""
        self.baseline_fps[stream_id] = round(mean_fps(bins, self.start_s - 3.0, self.start_s), 1)
        got = self.recovery_s[stream_id] = recovery_s(bins, self.end_s, limit_s)
        target = min(RECOVERED_FPS, 0.9 * self.baseline_fps[stream_id]) or RECOVERED_FPS
        self.recovery_to_baseline_s[stream_id] = recovery_s(bins, self.end_s, limit_s, target)
        self.min_fps[stream_id] = min_fps(bins, self.start_s, self.end_s + (got or 0.0))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        known = [v for v in self.recovery_s.values() if v is not None]
        out["recovered"] = bool(self.recovery_s) and all(v is not None for v in self.recovery_s.values())
        out["max_recovery_s"] = round(max(known), 2) if known else None
        # on a machine that other jobs loaded, a stream may run below real time (HELD_FPS, as the
        # throughput mode holds it) before the fault: without headroom, a stream at 25.3 fps before
        # may come back at 24 and never reach RECOVERED_FPS, though it recovered all it had
        out["below_real_time_before"] = any(v < HELD_FPS for v in self.baseline_fps.values())
        to_base = list(self.recovery_to_baseline_s.values())
        out["max_recovery_to_baseline_s"] = (
            max(v for v in to_base if v is not None) if to_base and None not in to_base else None
        )
        return out


def window_fps(bins: list[int], k: int) -> int:
    """Good frames in the 1 s that ends at bin `k` (exclusive)."""
    w = round(1 / BIN_S)
    return sum(bins[max(0, k - w) : max(0, k)])


def recovery_s(bins: list[int], end_s: float, limit_s: float, fps: float = RECOVERED_FPS) -> float | None:
    """Seconds from `end_s` until a 1 s window of `bins` holds `fps` frames; None within `limit_s`."""
    k0 = math.ceil(end_s / BIN_S - 1e-9)
    for k in range(k0, k0 + round(limit_s / BIN_S) + 1):
        if k > len(bins):
            return None
        if window_fps(bins, k) >= fps:
            return round(max(0.0, k * BIN_S - end_s), 2)
    return None


def mean_fps(bins: list[int], start_s: float, end_s: float) -> float:
    """Frames per second between two times (bins past the end count as none)."""
    lo, hi = max(0, round(start_s / BIN_S)), max(0, round(end_s / BIN_S))
    return sum(bins[lo:hi]) / max(BIN_S, (hi - lo) * BIN_S)


def min_fps(bins: list[int], start_s: float, end_s: float) -> float:
    """The lowest 1 s window count between two times (the depth of a fault's dip)."""
    lo, hi = math.ceil(start_s / BIN_S), math.floor(end_s / BIN_S)
    values = [window_fps(bins, k) for k in range(lo, hi + 1) if k <= len(bins)]
    return float(min(values)) if values else 0.0


class AvErrorLog(logging.Handler):
    """Times of FFmpeg's error messages (PyAV forwards them to logging as `libav.*`)."""

    def __init__(self, clock: Callable[[], float], cap: int = 100_000) -> None:
        super().__init__(logging.ERROR)
        self.clock = clock
        self.cap = cap
        self.times: list[float] = []
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.times) < self.cap:
            self.times.append(self.clock())
        if len(self.samples) < 5:
            self.samples.append(f"{record.name}: {record.getMessage()[:80]}")

    def windows(self, gap_s: float = 1.0) -> list[tuple[float, float, int]]:
        """Runs of errors: (first, last, count), a new run after `gap_s` without one."""
        out: list[tuple[float, float, int]] = []
        for t in self.times:
            if out and t - out[-1][1] <= gap_s:
                first, _, n = out[-1]
                out[-1] = (first, t, n + 1)
            else:
                out.append((t, t, 1))
        return out


@dataclass
class ChurnCycle:
    added_s: float
    removed_s: float | None = None
    remove_took_s: float | None = None
    reached_fps_s: float | None = None  # from add to a 1 s window of RECOVERED_FPS good frames
    disturbed_by: str | None = None  # an injected fault overlapped this cycle
    steady_fps: float | None = None  # the slowest steady stream's rate during the cycle
    reached_steady_rate_s: float | None = None  # from add to 90 % of that rate (if below 25 fps)


async def churn(
    add: Callable[[], None],
    remove: Callable[[], Awaitable[None]],
    clock: Callable[[], float],
    stop: asyncio.Event,
    on_s: float,
    off_s: float,
) -> list[ChurnCycle]:
    """Add a stream, keep it `on_s`, remove it, wait `off_s`; again until `stop`."""
    cycles: list[ChurnCycle] = []
    while not stop.is_set():
        cycle = ChurnCycle(round(clock(), 2))
        add()
        cycles.append(cycle)
        await _sleep_unless(stop, on_s)
        t0 = time.monotonic()
        await remove()
        cycle.removed_s, cycle.remove_took_s = round(clock(), 2), round(time.monotonic() - t0, 3)
        await _sleep_unless(stop, off_s)
    return cycles


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
