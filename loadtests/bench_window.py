"""Measuring windows of a running graph for loadtests/gpu_bench.py: per-stream fps, drops and
latency between two snapshots, and probes of GIL and event-loop starvation."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from collections import Counter
from typing import Any

from engine.metrics import LatencySamples, Metrics

FPS = 30  # the cameras' rate: a stream is held when it delivers >= FPS - 1


def snapshot(metrics: Metrics) -> dict[str, Any]:
    drops: Counter[str] = Counter()
    drops_by_stream: Counter[str] = Counter()
    for node in metrics.nodes.values():
        for (stream, reason), n in node.dropped.items():
            drops[reason] += n
            drops_by_stream[stream] += n
    return {
        "t": time.monotonic(),
        "out": {sid: s.frames_out for sid, s in metrics.streams.items()},
        "lat": {sid: len(s.latency.samples) for sid, s in metrics.streams.items()},
        "drops": drops,
        "drops_by_stream": drops_by_stream,
    }


def window(metrics: Metrics, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Figures between two snapshots."""
    span = b["t"] - a["t"]
    fps = {sid: (b["out"][sid] - a["out"].get(sid, 0)) / span for sid in b["out"]}
    latency = [
        v
        for sid, s in metrics.streams.items()
        for v in s.latency.samples[a["lat"].get(sid, 0) : b["lat"][sid]]
    ]
    drops = b["drops"] - a["drops"]
    drops_by_stream = b["drops_by_stream"] - a["drops_by_stream"]
    held = [sid for sid, f in fps.items() if f >= FPS - 1 and drops_by_stream[sid] == 0]
    return summarize_window(span, fps, latency, drops, held)


def summarize_window(
    span: float, fps: dict[str, float], latency: list[float], drops: Counter[str], held: list[str]
) -> dict[str, Any]:
    """The figures of one measuring window (of one process, or merged over processes)."""
    values = sorted(fps.values())
    return {
        "window_s": round(span, 2),
        "total_fps": round(sum(values), 1),
        "per_stream_fps": {
            "min": round(values[0], 2),
            "median": round(statistics.median(values), 2),
            "max": round(values[-1], 2),
        },
        "streams_realtime": len(held),
        "latency_ms": LatencySamples().percentiles(latency),
        "drops_by_reason": dict(drops),
        "drops_total": sum(drops.values()),
        "_raw": {"fps": fps, "latency": latency, "held": held},  # merged over processes, then dropped
    }


class Starvation:
    """How long a thread waits for the GIL and the event loop for its turn, while a graph runs.

    A thread sleeps 1 ms in a loop and a task sleeps 10 ms in a loop; what each oversleeps is
    time spent waiting for the GIL (thread) or for the loop (task). p99s of tens of ms say the
    process is GIL-bound: more processes, not a bigger GPU, is the cure.
    """

    def __init__(self) -> None:
        self.gil: list[float] = []
        self.loop: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe_gil, name="gil-probe", daemon=True)
        self._task: asyncio.Task[None] | None = None

    def _probe_gil(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            self.gil.append((time.perf_counter() - t - 0.001) * 1000)

    async def _probe_loop(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.loop.append((time.perf_counter() - t - 0.01) * 1000)

    def __enter__(self) -> Starvation:
        self._thread.start()
        self._task = asyncio.get_running_loop().create_task(self._probe_loop())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        self._thread.join(timeout=1)

    def figures(self) -> dict[str, Any]:
        return {
            "gil_wait": LatencySamples().percentiles(self.gil),
            "loop_lag": LatencySamples().percentiles(self.loop),
        }


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) each group of this process's threads has used so far, by
    thread name without its numbers (Linux /proc; {} elsewhere). Threads that ended are gone."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}  # the OS knows them all as python
    out: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "(not a Python thread)")  # uvloop's, a library's own threads
        group = re.sub(r"[-_]?\d+", "", name) or name
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) * tick_s
    return out


def cores_by_thread(a: dict[str, float], b: dict[str, float], span_s: float) -> dict[str, float]:
    """Cores each thread group used between two `thread_cpu_s` readings, busiest first."""
    used = {k: (v - a.get(k, 0.0)) / span_s for k, v in b.items()}
    return {k: round(v, 3) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.005}


class _Both(LatencySamples):
    """A node's own latency samples, also copied into a measuring window's."""

    def __init__(self, whole: LatencySamples, window: LatencySamples) -> None:
        super().__init__(whole.cap)
        self.whole = whole
        self.window = window

    def add(self, value_ms: float) -> None:
        self.whole.add(value_ms)
        self.window.add(value_ms)


class Stages:
    """Each node's queue wait and work within a measuring window (a node's own figures cover the
    whole run, start-up included): `with Stages(metrics) as stages: ...`, then `stages.figures()`.
    `raw` keeps up to `keep` samples per figure, to merge windows over processes."""

    FIGURES = ("queue_wait", "work")

    def __init__(self, metrics: Metrics, keep: int = 5000) -> None:
        self.metrics = metrics
        self.samples: dict[str, dict[str, LatencySamples]] = {}
        self.keep = keep

    def __enter__(self) -> Stages:
        for nid, node in self.metrics.nodes.items():  # sources too: stage_figures leaves them out
            self.samples[nid] = {}
            for name in self.FIGURES:
                own = getattr(node, name)
                self.samples[nid][name] = window = LatencySamples(self.keep)
                setattr(node, name, _Both(own, window))
        return self

    def __exit__(self, *exc: object) -> None:
        for nid in self.samples:
            node = self.metrics.nodes[nid]
            for name in self.FIGURES:
                both = getattr(node, name)
                if isinstance(both, _Both):
                    setattr(node, name, both.whole)

    def raw(self) -> dict[str, dict[str, list[float]]]:
        """The window's samples (a reservoir of `keep` each), by node and figure."""
        return {nid: {k: list(s.samples) for k, s in figs.items()} for nid, figs in self.samples.items()}


def stage_figures(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """p50/p95/p99 of each node's queue wait and work in ms (from `Stages.raw`, or merged)."""
    return {
        nid: {f"{k}_ms": LatencySamples().percentiles(v) for k, v in figs.items()}
        for nid, figs in raw.items()
        if any(figs.values())
    }


def merge_stage_raw(parts: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """Stage samples of several processes' windows, pooled by node and figure."""
    out: dict[str, dict[str, list[float]]] = {}
    for part in parts:
        for nid, figs in part.items():
            for k, values in figs.items():
                out.setdefault(nid, {}).setdefault(k, []).extend(values)
    return out
