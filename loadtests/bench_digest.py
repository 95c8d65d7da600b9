"""The GPU goal's figures from gpu_bench.json files, one line per graph run, and the verdict.

    python loadtests/bench_digest.py OUT/bench-torch/gpu_bench.json [OUT/bench-triton/gpu_bench.json ...]

gpu_check.sh ends with it, so the figures that matter are in summary.txt and at the end of the
command's output even when its files cannot be fetched. The goal (issue: the GPU path): >= 64
streams of 1080p30 held at real time with p95 end-to-end latency < 150 ms, and the full graph at
>= 75 % of the raw decode ceiling. Below the ceiling the graph can deliver no more than it is
offered (64 x 30 fps), so the ratio judged is total fps / min(ceiling, offered fps)
(`ratio_full_to_min_offered_ceiling`); `ratio_full_to_ceiling` is printed beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOAL_STREAMS = 64
GOAL_P95_MS = 150.0
GOAL_RATIO = 0.75


def _stages(run: dict[str, Any], top: int = 3) -> str:
    """The nodes with the largest p95 queue wait + work, e.g. 'detect 12+25'."""
    stages = run.get("stages_ms") or {}

    def p95(figures: dict[str, Any], name: str) -> float:
        return float((figures.get(name) or {}).get("p95") or 0.0)

    ranked = sorted(stages.items(), key=lambda kv: -(p95(kv[1], "queue_wait_ms") + p95(kv[1], "work_ms")))
    return ", ".join(
        f"{nid} {p95(f, 'queue_wait_ms'):.0f}+{p95(f, 'work_ms'):.0f}" for nid, f in ranked[:top]
    )


def meets_goal(run: dict[str, Any]) -> bool:
    """True when a run of >= 64 streams held them all at p95 < 150 ms and >= 75 % of its ceiling."""
    streams = int(run.get("streams") or 0)
    p95 = (run.get("latency_ms") or {}).get("p95")
    ratio = run.get("ratio_full_to_min_offered_ceiling")
    return (
        streams >= GOAL_STREAMS
        and run.get("streams_realtime") == streams
        and p95 is not None
        and p95 < GOAL_P95_MS
        and ratio is not None
        and ratio >= GOAL_RATIO
    )


def run_line(label: str, key: str, run: dict[str, Any]) -> str:
    """One graph run's figures on one line."""
    if "skipped" in run or ("error" in run and "total_fps" not in run):
        return f"{label} {key}: {run.get('skipped') or run.get('error')}"
    lat = run.get("latency_ms") or {}
    memory = run.get("gpu_memory_mib") or {}
    used = memory.get("nvidia_smi_used")
    parts = [
        f"{label} {run.get('streams')} streams x{run.get('processes', 1)}p:",
        f"held {run.get('streams_realtime')}/{run.get('streams')},",
        f"{run.get('total_fps')} fps,",
        f"p50/p95 {lat.get('p50')}/{lat.get('p95')} ms,",
        f"vs ceiling {run.get('ratio_full_to_ceiling')} (vs min(ceiling, offered) "
        f"{run.get('ratio_full_to_min_offered_ceiling')}),",
        f"drops {run.get('drops_total', 0)},",
        f"cpu {run.get('cpu_cores_used')} cores",
    ]
    line = " ".join(parts)
    if used is not None:
        line += f", gpu {used} MiB"
    tracked = (run.get("events") or {}).get("tracked_faces")
    if tracked is not None:
        line += f", tracked faces {tracked}"
    stages = _stages(run)
    if stages:
        line += f"; p95 wait+work ms: {stages}"
    if run.get("errors"):
        line += f"; errors: {run['errors']}"
    return line


def digest(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Lines for each report's ceiling and graph runs, then the verdict over all of them."""
    lines: list[str] = []
    met: list[str] = []
    for label, report in reports:
        ceiling = report.get("ceiling") or {}
        fps = {k: v.get("fps") for k, v in ceiling.items() if isinstance(v, dict) and v.get("fps")}
        if fps:
            lines.append(
                f"{label} decode ceiling fps: " + ", ".join(f"{k} streams {v}" for k, v in fps.items())
            )
        for key, run in (report.get("graph") or {}).items():
            lines.append(run_line(label, key, run))
            if meets_goal(run):
                met.append(f"{label} {key}")
    verdict = (
        f"GOAL MET by {', '.join(met)}"
        if met
        else f"goal not met: no run held >= {GOAL_STREAMS} streams at p95 < {GOAL_P95_MS:.0f} ms "
        f"and >= {GOAL_RATIO:.0%} of its ceiling"
    )
    return [*lines, verdict]


def main(argv: list[str]) -> int:
    reports = []
    for arg in argv:
        path = Path(arg)
        if not path.is_file():
            print(f"{path}: no report")
            continue
        try:
            report = json.loads(path.read_text())
        except ValueError as e:
            print(f"{path}: unreadable JSON ({e})")
            continue
        label = report.get("infer") or path.parent.name
        if report.get("rehearsal"):
            label = f"rehearsal ({report['rehearsal'].get('simulated_gpu', 'h100')})"
        reports.append((str(label), report))
    for line in digest(reports):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
