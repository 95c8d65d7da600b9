"""PNG plots of a run: fps per stream, latency percentiles, drops, RSS/fds/threads, Kafka events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from loadtests.reliability.options import HELD_FPS, RECOVERED_FPS

FAULT_COLOURS = {
    "rtsp_restart": "tab:red",
    "camera_stall": "tab:orange",
    "broker_down": "tab:purple",
    "triton_restart": "tab:brown",
    "corrupt_packets": "tab:gray",
}


def _faults(ax: Axes, faults: list[dict[str, Any]]) -> None:
    labelled: set[str] = set()
    for f in faults:
        colour = FAULT_COLOURS.get(f["kind"])
        if colour is None:
            continue
        label = None if f["kind"] in labelled else f["kind"]
        labelled.add(f["kind"])
        ax.axvspan(f["start_s"], max(f["end_s"], f["start_s"] + 0.2), color=colour, alpha=0.18, label=label)


def _gaps(t: list[float], v: list[float], max_gap_s: float = 1.6) -> tuple[list[float], list[float]]:
    """A NaN where samples are far apart (a removed stream, a new runtime): no line across."""
    ts: list[float] = []
    vs: list[float] = []
    for i, (x, y) in enumerate(zip(t, v, strict=True)):
        if i and x - t[i - 1] > max_gap_s:
            ts.append(x)
            vs.append(float("nan"))
        ts.append(x)
        vs.append(y)
    return ts, vs


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def draw(out: Path, s: dict[str, Any], faults: list[dict[str, Any]], title: str) -> list[str]:
    """Write the PNGs into `out`; their file names."""
    files = []
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for sid, (t, v) in sorted(s["fps"].items()):
        ax.plot(*_gaps(t, v), lw=1, label=sid)
    ax.axhline(HELD_FPS, color="k", ls="--", lw=0.8, label=f"{HELD_FPS:g} fps (held)")
    ax.axhline(RECOVERED_FPS, color="k", ls=":", lw=0.8, label=f"{RECOVERED_FPS:g} fps (recovered)")
    _faults(ax, faults)
    ax.set(xlabel="s", ylabel="frames/s at the graph's end", title=f"{title}: fps per stream")
    ax.set_ylim(0, 2.2 * HELD_FPS)  # a reconnect's first second is a burst: clipped
    ax.legend(fontsize=7, ncol=4, loc="lower left")
    files.append(_save(fig, out / "fps.png"))

    fig, ax = plt.subplots(figsize=(11, 4))
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax.plot(
            s["t"], [v if v is not None else float("nan") for v in s["latency_ms"][key]], style, label=key
        )
    _faults(ax, faults)
    ax.set(xlabel="s", ylabel="capture to end, ms", title=f"{title}: latency percentiles per sample")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for sid, (t, v) in sorted(s["drops"].items()):
        ax.step(t, v, where="post", lw=1, label=sid)
    _faults(ax, faults)
    ax.set(xlabel="s", ylabel="frames dropped (cumulative)", title=f"{title}: drops per stream")
    ax.legend(fontsize=7, ncol=4)
    files.append(_save(fig, out / "drops.png"))

    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(s["t"], s["rss_mb"], label="RSS MB")
    ax.plot(
        s["t"],
        [r - m for r, m in zip(s["rss_mb"], s["reservoir_mb"], strict=True)],
        lw=0.8,
        label="RSS less metric reservoirs",
    )
    ax.set(xlabel="s", ylabel="MB", title=f"{title}: engine process RSS, fds, threads")
    twin = ax.twinx()
    twin.plot(s["t"], s["fds"], color="tab:green", lw=0.8, label="open fds")
    twin.plot(s["t"], s["threads"], color="tab:olive", lw=0.8, label="threads")
    twin.set_ylabel("count")
    _faults(ax, faults)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    files.append(_save(fig, out / "rss.png"))

    if any(s["kafka"]):
        fig, ax = plt.subplots(figsize=(11, 3.5))
        for key in ("accepted", "sent", "spooled", "replayed", "consumed_unique"):
            ax.plot(s["t"], [k.get(key, float("nan")) for k in s["kafka"]], lw=1, label=key)
        _faults(ax, faults)
        ax.set(xlabel="s", ylabel="events (cumulative, per runtime)", title=f"{title}: Kafka events")
        ax.legend(fontsize=7)
        files.append(_save(fig, out / "kafka.png"))
    return files
