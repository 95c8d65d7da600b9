"""Figures from the timeline (fps, latency, RSS fit, drift), the checks a run must pass, report.json."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

BYTES_PER_SAMPLE = 32  # a float in a list: an 8-byte slot and a 24-byte float object
FLOOR_WINDOW_S = 20.0  # the RSS saw-tooth of a busy run repeats every 10-20 s


def series(rows: list[dict[str, Any]], window_s: float = 1.0) -> dict[str, Any]:
    """Series for plots: per stream (t, fps) and (t, drops); pooled latency and process stats per sample.

    A stream's fps is its frames out over the last `window_s` (batching makes shorter spans
    jumpy), within one runtime (phase), while the stream is live.
    """
    fps: dict[str, tuple[list[float], list[float]]] = {}
    drops: dict[str, tuple[list[float], list[float]]] = {}
    lat: dict[str, list[float | None]] = {"p50": [], "p95": [], "p99": []}
    history: dict[str, list[tuple[float, int, str]]] = {}
    for r in rows:
        pooled: list[float] = []
        for sid, s in r["streams"].items():
            past = [h for h in history.get(sid, []) if h[2] == r["phase"]]
            live = s.get("live", True) and not r.get("final")
            older = [h for h in past if r["t"] - h[0] >= window_s - 1e-6]
            if live and older:
                t0, out0, _ = older[-1]
                ts, vs = fps.setdefault(sid, ([], []))
                ts.append(r["t"])
                vs.append(round((s["out"] - out0) / (r["t"] - t0), 2))
            history[sid] = [*past[-8:], (r["t"], s["out"], r["phase"])] if live else []
            ts, vs = drops.setdefault(sid, ([], []))
            ts.append(r["t"])
            vs.append(sum(s["drops"].values()))
            pooled += s["lat"]
        p = np.percentile(pooled, [50, 95, 99]).tolist() if pooled else [None, None, None]
        for key, v in zip(("p50", "p95", "p99"), p, strict=True):
            lat[key].append(None if v is None else round(float(v), 1))
    return {
        "t": [r["t"] for r in rows],
        "fps": fps,
        "drops": drops,
        "latency_ms": lat,
        "rss_mb": [r["rss_mb"] for r in rows],
        "fds": [r["fds"] for r in rows],
        "threads": [r["threads"] for r in rows],
        "reservoir_mb": [r["reservoir"] * BYTES_PER_SAMPLE / 2**20 for r in rows],
        "kafka": [r.get("kafka", {}) for r in rows],
        "phase": [r["phase"] for r in rows],
    }


def slope_per_hour(t: list[float], y: list[float]) -> float | None:
    """Least-squares slope of y over t (seconds), per hour."""
    if len(t) < 3 or max(t) - min(t) <= 0:
        return None
    return float(np.polyfit(np.asarray(t), np.asarray(y), 1)[0]) * 3600


def floors(t: list[float], y: list[float], window_s: float) -> tuple[list[float], list[float]]:
    """The lowest y in each whole `window_s` (the allocator's saw-tooth floor: memory kept), and when."""
    out_t: list[float] = []
    out_y: list[float] = []
    if not t:
        return out_t, out_y
    start = t[0]
    while start + window_s <= t[-1] + 1e-9:
        inside = [(v, x) for x, v in zip(t, y, strict=True) if start <= x < start + window_s]
        if inside:
            v, x = min(inside)
            out_t.append(x)
            out_y.append(v)
        start += window_s
    return out_t, out_y


def soak_figures(rows: list[dict[str, Any]], warm_s: float, end_s: float) -> dict[str, Any]:
    """RSS growth per hour (linear fit after warm-up), fds and threads, latency drift by thirds."""
    after = [r for r in rows if warm_s <= r["t"] <= end_s + 0.01]
    t = [r["t"] for r in after]
    rss = [r["rss_mb"] for r in after]
    adjusted = [r["rss_mb"] - r["reservoir"] * BYTES_PER_SAMPLE / 2**20 for r in after]
    per_hour = slope_per_hour(t, rss)
    adjusted_per_hour = slope_per_hour(t, adjusted)
    floor_t, floor = floors(t, rss, FLOOR_WINDOW_S)
    floor_per_hour = slope_per_hour(floor_t, floor)
    adjusted_floor_t, adjusted_floor = floors(t, adjusted, FLOOR_WINDOW_S)
    adjusted_floor_per_hour = slope_per_hour(adjusted_floor_t, adjusted_floor)
    span = (t[-1] - t[0]) if t else 0.0
    third = span / 3
    first = [v for r in after if r["t"] < t[0] + third for s in r["streams"].values() for v in s["lat"]]
    last = [v for r in after if r["t"] >= t[-1] - third for s in r["streams"].values() for v in s["lat"]]
    p95_first = float(np.percentile(first, 95)) if first else None
    p95_last = float(np.percentile(last, 95)) if last else None
    return {
        "measured_s": round(span, 1),
        "rss_mb_start": rss[0] if rss else None,
        "rss_mb_end": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_growth_mb_per_hour": None if per_hour is None else round(per_hour, 1),
        "rss_growth_mb_in_run": None if per_hour is None else round(per_hour * span / 3600, 2),
        "rss_floor_growth_mb_per_hour": None if floor_per_hour is None else round(floor_per_hour, 1),
        "rss_floors_mb": [round(v, 1) for v in floor],
        # the engine's latency reservoirs fill up to their caps (50k samples a stream, 10k a node
        # and stage) in the first minutes: bounded, but a short soak would read it as growth
        "rss_floor_growth_mb_per_hour_without_metric_reservoirs": (
            None if adjusted_floor_per_hour is None else round(adjusted_floor_per_hour, 1)
        ),
        "rss_growth_mb_per_hour_without_metric_reservoirs": (
            None if adjusted_per_hour is None else round(adjusted_per_hour, 1)
        ),
        "metric_reservoirs_mb_end": round(after[-1]["reservoir"] * BYTES_PER_SAMPLE / 2**20, 2)
        if after
        else None,
        "fds": [after[0]["fds"], after[-1]["fds"], max(r["fds"] for r in after)] if after else None,
        "threads": [after[0]["threads"], after[-1]["threads"], max(r["threads"] for r in after)]
        if after
        else None,
        "latency_p95_ms_first_third": None if p95_first is None else round(p95_first, 1),
        "latency_p95_ms_last_third": None if p95_last is None else round(p95_last, 1),
        "latency_p95_drift_ratio": round(p95_last / p95_first, 3) if p95_first and p95_last else None,
    }


def events_figures(kafka: dict[str, int], consumed: dict[str, Any], lost_in_broker: int) -> dict[str, Any]:
    """Events the sink accepted against those the consumer group read (each event id once)."""
    accepted = kafka.get("accepted", 0)
    unique = consumed.get("unique", 0)
    return {
        "accepted": accepted,
        "sent": kafka.get("sent", 0),
        "spooled": kafka.get("spooled", 0),
        "replayed": kafka.get("replayed", 0),
        "failed": kafka.get("failed", 0),
        "consumed": consumed.get("consumed", 0),
        "consumed_unique": unique,
        "duplicates": consumed.get("duplicates", 0),
        "lost_in_broker_restart": lost_in_broker,
        "lost": accepted - unique - lost_in_broker,
        "consumer": {k: consumed.get(k) for k in ("caught_up", "waited_s", "joined_s", "errors", "by_type")},
    }


class Checks:
    """Named pass/fail checks with their value and bound."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, value: Any, bound: Any) -> None:
        self.items.append({"name": name, "ok": bool(ok), "value": value, "bound": bound})

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.items)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_default) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
