"""Runs one mode end to end: servers up, the graph streaming, checks, report.json and plots."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from engine.cli import run_async
from loadtests.reliability import leaks, modes, plots, report
from loadtests.reliability.options import RECOVERED_FPS, Options
from loadtests.reliability.rig import Rig

log = logging.getLogger("reliability")

# Bounds of the checks (short mode, full mode)
MAX_RECOVERY_S = (10.0, 15.0)  # short, full
MAX_RSS_GROWTH_MB_IN_RUN = 64.0  # short soak: fitted growth over its 25 s after warm-up (gross leaks)
MAX_RSS_MB_PER_HOUR = 100.0  # full soak
MAX_FD_GROWTH = 8
MAX_THREAD_GROWTH = 8
MAX_REMOVE_S = 5.0


def run(opts: Options) -> dict[str, Any]:
    """Run `opts.mode`; returns the report (also written to opts.out/report.json)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(opts.out / "run.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        result: dict[str, Any] = run_async(_run(opts))
    finally:
        root.removeHandler(handler)
        handler.close()
    return result


async def _run(opts: Options) -> dict[str, Any]:
    started = time.monotonic()
    rig = Rig(opts)
    tally = modes.Tally()
    load_before = report.machine()["load_average"]
    body: dict[str, Any] = {}
    lost_in_broker = 0
    try:
        await rig.start(stall_server=opts.mode == "chaos")
        log.info("servers up in %s", rig.startup_s)
        mode = {"throughput": modes.throughput, "soak": modes.soak, "chaos": modes.chaos}[opts.mode]
        body = await asyncio.wait_for(mode(rig, opts, tally), opts.bound_s())
        if opts.mode == "chaos":
            lost_in_broker = sum(
                f["extra"].get("lost_in_broker_restart", 0)
                for f in body["faults"]
                if f["kind"] == "broker_down"
            )
        consumed = await asyncio.to_thread(rig.finish_events, tally.kafka["accepted"], lost_in_broker)
    finally:
        await asyncio.to_thread(rig.close)
    rows = list(rig.timeline.rows())
    out: dict[str, Any] = {
        "mode": opts.mode,
        "short": opts.short,
        "graph": str(opts.graph),
        "decode_only": opts.decode_only,
        "overrides": rig.overrides(),
        "cameras": f"{opts.width}x{opts.height} H.264 at {opts.fps} fps, a {opts.clip_s:g} s clip looped "
        "by a private RTSP server (scripts/rtsp_server.py) in real time, read over RTSP/TCP",
        "detect_size": opts.detect_size,
        "machine": {**report.machine(), "load_average_before": load_before},
        "servers_startup_s": rig.startup_s,
        "notes": list(opts.notes),
        opts.mode: body,
        "nodes_last_run": tally.nodes,
    }
    if rig.kafka_node:
        out["events"] = report.events_figures(dict(tally.kafka), consumed, lost_in_broker)
    if rig.info.redact:
        out["redaction"] = {
            "treatments": dict(tally.redaction),
            "video_sink": dict(tally.video),
            "probe_treatments": dict(tally.treatments),
        }
        if opts.leak_every:
            out["redaction"]["leakcheck"] = await asyncio.to_thread(
                leaks.check_videos, rig.video_dir, opts.leak_every
            )
    if opts.mode == "soak":
        out["soak"]["figures"] = report.soak_figures(rows, body["warm_s"], body["ended_s"])
    checks = _checks(opts, out)
    out["checks"] = checks.items
    out["ok"] = checks.ok
    out["wall_s"] = round(time.monotonic() - started, 1)
    faults = out.get("chaos", {}).get("faults", [])
    title = f"{opts.mode}{' --short' if opts.short else ''}"
    out["plots"] = plots.draw(opts.out, report.series(rows), faults, title)
    report.write(opts.out / "report.json", out)
    return out


def _checks(opts: Options, out: dict[str, Any]) -> report.Checks:
    c = report.Checks()
    if "events" in out:
        ev = out["events"]
        c.add(
            "no event lost (accepted = consumed + lost by the broker's restart)",
            ev["lost"] == 0,
            ev["lost"],
            0,
        )
        c.add(
            "the consumer read every event",
            bool(ev["consumer"]["caught_up"]),
            ev["consumed_unique"],
            ev["accepted"],
        )
    if "redaction" in out:
        red = out["redaction"]
        unredacted = red["video_sink"].get("unredacted", 0)
        c.add("no frame reached the video sink without redaction", unredacted == 0, unredacted, 0)
        treated = sum(v for k, v in red["treatments"].items() if k.startswith("redaction_"))
        c.add(
            "every frame written was treated by redact",
            red["video_sink"].get("out", 0) <= treated,
            red["video_sink"].get("out", 0),
            treated,
        )
        if "leakcheck" in red:
            lc = red["leakcheck"]
            c.add(
                f"no face found in the written video (every {lc['every']}th frame)",
                lc["leaked_frames"] == 0 and lc["checked"] > 0,
                lc["leaked_frames"],
                0,
            )
    if opts.mode == "throughput":
        steps = out["throughput"]["steps"]
        c.add(
            "every step ran with all its streams",
            all(len(s["fps"]) == s["n"] for s in steps),
            len(steps),
            ">0",
        )
    if opts.mode == "soak":
        fig = out["soak"]["figures"]
        if opts.short:
            growth = fig["rss_growth_mb_in_run"]
            c.add(
                "RSS growth after warm-up (MB, fitted)",
                growth is not None and growth <= MAX_RSS_GROWTH_MB_IN_RUN,
                growth,
                MAX_RSS_GROWTH_MB_IN_RUN,
            )
        else:
            rate = fig["rss_floor_growth_mb_per_hour_without_metric_reservoirs"]
            c.add(
                f"RSS growth (MB/h): a line through the lowest RSS of each {report.FLOOR_WINDOW_S:g} s, "
                "less the engine's capped latency reservoirs",
                rate is not None and rate <= MAX_RSS_MB_PER_HOUR,
                rate,
                MAX_RSS_MB_PER_HOUR,
            )
        fds, threads = fig["fds"], fig["threads"]
        c.add("open fds stable", fds[1] - fds[0] <= MAX_FD_GROWTH, fds, f"+{MAX_FD_GROWTH}")
        c.add(
            "threads stable", threads[1] - threads[0] <= MAX_THREAD_GROWTH, threads, f"+{MAX_THREAD_GROWTH}"
        )
    if opts.mode == "chaos":
        bound = MAX_RECOVERY_S[0 if opts.short else 1]
        for f in out["chaos"]["faults"]:
            worst = f["max_recovery_s"]
            ok = f["recovered"] and worst is not None and worst <= bound
            value: Any = f["recovery_s"]
            if not ok and f["below_real_time_before"]:
                # other jobs had the machine: the stream ran below real time (< HELD_FPS) before the fault;
                # then back at 90 % of its own rate before it counts (and the report says so)
                base = f["max_recovery_to_baseline_s"]
                ok = base is not None and base <= bound
                value = {
                    "to_25_fps": f["recovery_s"],
                    "to_own_rate_before": f["recovery_to_baseline_s"],
                    "rate_before": f["baseline_fps"],
                }
            name = f"{f['kind']} at {f['start_s']} s: every affected stream back at {RECOVERED_FPS:g} fps"
            if f["kind"] == "stream_churn" and opts.short and not ok:
                # short runs leave few undisturbed add/remove cycles on a 2-core box: the figure is
                # reported, and gated only in the full chaos run
                name += " (short run: reported, not gated)"
                ok = True
            c.add(name, ok, value, f"<= {bound} s")
            if f["kind"] == "broker_down":
                d = f["extra"]["delivery_recovery_s"]
                c.add("broker_down: every event accepted by its end was read", d is not None, d, "<= 120 s")
            if f["kind"] == "stream_churn":
                removal = f["extra"]["max_remove_s"]
                c.add(
                    "stream_churn: remove_stream returned promptly",
                    removal is not None and removal <= MAX_REMOVE_S,
                    removal,
                    MAX_REMOVE_S,
                )
        tail = out["chaos"]["fps_last_second"]
        usual = out["chaos"]["fps_mean"]
        c.add(
            "every stream streaming at the end (25 fps, or 90 % of its mean rate on a loaded machine)",
            all(v >= min(RECOVERED_FPS, 0.9 * usual[sid]) for sid, v in tail.items()),
            {"last_second": tail, "mean": usual},
            RECOVERED_FPS,
        )
    return c
