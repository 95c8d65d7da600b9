"""The three modes: throughput (largest N held at real time), soak (fixed N, long), chaos (faults)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import av.logging

from loadtests.reliability.consumer import create_topic
from loadtests.reliability.faults import (
    AvErrorLog,
    ChurnCycle,
    Fault,
    churn,
    mean_fps,
    recovery_s,
    window_fps,
)
from loadtests.reliability.options import HELD_FPS, RECOVERED_FPS, Options
from loadtests.reliability.probe import BIN_S
from loadtests.reliability.rig import Rig
from loadtests.reliability.session import Session

log = logging.getLogger("reliability")
RESCAN_S = 1.2  # the RTSP server mounts new files within a second


class Tally:
    """What every session of a run adds up to: Kafka counters, redaction counts, summaries."""

    def __init__(self) -> None:
        self.kafka: Counter[str] = Counter()
        self.redaction: Counter[str] = Counter()
        self.video: Counter[str] = Counter()
        self.treatments: Counter[str] = Counter()
        self.summaries: list[dict[str, Any]] = []
        self.nodes: dict[str, Any] = {}  # the last session's nodes: work and load per node

    def add(self, session: Session, summary: dict[str, Any], rig: Rig) -> None:
        self.summaries.append(summary)
        self.nodes = {
            nid: {k: n.get(k) for k in ("in", "out", "dropped", "errors", "busy_s", "mean_batch", "work_ms")}
            for nid, n in summary["nodes"].items()
        }
        self.kafka.update(session.kafka_counters())
        nodes = summary["nodes"]
        for node in rig.info.redact:
            self.redaction.update(nodes[node].get("events", {}))
        for node in rig.info.video:
            v = nodes[node]
            self.video.update({"in": v["in"], "out": v["out"], **v["dropped_by_reason"]})
        for (_, treatment), n in session.probe.treatments.items():
            self.treatments[treatment] += n


def _snapshot(session: Session) -> dict[str, tuple[int, int]]:
    m = session.runtime.metrics
    return {sid: (s.frames_out, m.dropped_for(sid)) for sid, s in m.streams.items()}


async def throughput(rig: Rig, opts: Options, tally: Tally) -> dict[str, Any]:
    """Step N up; each step a fresh graph with N cameras: held when every stream >= HELD_FPS, no drops."""
    steps: list[dict[str, Any]] = []
    urls = [rig.camera(f"cam{i}") for i in range(max(opts.steps))]
    await asyncio.sleep(RESCAN_S)
    for n in opts.steps:
        cams = {f"cam{i}": urls[i] for i in range(n)}
        session = rig.session(f"n={n}")
        await session.start()
        started = session.now()
        for sid, url in cams.items():
            session.add(sid, url)
        await asyncio.sleep(opts.warmup_s)
        t0, before = session.now(), _snapshot(session)
        await asyncio.sleep(opts.step_s)
        t1, after = session.now(), _snapshot(session)
        summary = await session.stop()
        tally.add(session, summary, rig)
        fps = {sid: round((after[sid][0] - before.get(sid, (0, 0))[0]) / (t1 - t0), 2) for sid in cams}
        drops = {sid: after[sid][1] - before.get(sid, (0, 0))[1] for sid in cams}
        held = all(v >= HELD_FPS for v in fps.values()) and not any(drops.values())
        step = {
            "n": n,
            "held": held,
            "started_s": round(started, 2),
            "measured_s": [round(t0, 2), round(t1, 2)],
            "fps": fps,
            "min_fps": min(fps.values()),
            "drops_after_warmup": drops,
            "latency_ms": {sid: summary["streams"][sid]["latency_ms"] for sid in cams},
        }
        steps.append(step)
        log.info("throughput n=%d held=%s min fps %.1f drops %s", n, held, step["min_fps"], drops)
        if not held:
            break
    held_n = [s["n"] for s in steps if s["held"]]
    return {"steps": steps, "largest_n_held": max(held_n) if held_n else 0}


async def soak(rig: Rig, opts: Options, tally: Tally) -> dict[str, Any]:
    """N cameras for warm-up + duration; the timeline carries RSS, fds, threads and latency."""
    cams = {f"cam{i}": rig.camera(f"cam{i}") for i in range(opts.streams)}
    await asyncio.sleep(RESCAN_S)
    session = rig.session("soak")
    await session.start()
    for sid, url in cams.items():
        session.add(sid, url)
    started = session.now()
    await asyncio.sleep(opts.warmup_s)
    warm = session.now()
    await asyncio.sleep(opts.duration_s)
    ended = session.now()
    after = _snapshot(session)
    summary = await session.stop()
    tally.add(session, summary, rig)
    fps = {sid: round(mean_fps(session.probe.series(sid), warm, ended), 2) for sid in cams}
    return {
        "streams": list(cams),
        "started_s": round(started, 2),
        "warm_s": round(warm, 2),
        "ended_s": round(ended, 2),
        "fps_after_warmup": fps,
        "held": all(v >= HELD_FPS for v in fps.values()),
        "drops": {sid: after[sid][1] for sid in cams},
        "note": ""
        if all(v >= HELD_FPS for v in fps.values())
        else "streams below real time: queues filled up and latency grew; part of the RSS growth "
        "is that backlog (bounded by the queues), not a leak: measure on a quieter machine",
    }


async def chaos(rig: Rig, opts: Options, tally: Tally) -> dict[str, Any]:
    """Plain cameras, a corrupt one, a stalling one and a churning one, while the faults come."""
    assert rig.stall_rtsp is not None
    cams = {f"cam{i}": rig.camera(f"cam{i}") for i in range(opts.streams)}
    cams["corrupt0"] = rig.camera("corrupt0", corrupt=True)
    stall_url = rig.camera("stall0", server=rig.stall_rtsp)
    churn_url = rig.camera("churn")
    await asyncio.sleep(RESCAN_S)
    main = [*cams]  # the cameras of the main RTSP server
    steady = [*main, "stall0"]
    av_errors = AvErrorLog(lambda: time.monotonic() - rig.origin_s)
    libav = logging.getLogger("libav")
    libav.addHandler(av_errors)
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's decode errors: where the corrupt packets land
    session = rig.session("chaos")
    await session.start()
    for sid, url in cams.items():
        session.add(sid, url)
    session.add("stall0", stall_url)
    faults: list[Fault] = []
    stop_churn = asyncio.Event()
    churn_task: asyncio.Task[list[ChurnCycle]] | None = None
    try:
        await asyncio.sleep(opts.warmup_s)
        churn_task = asyncio.create_task(
            churn(
                lambda: session.add("churn", churn_url),
                lambda: session.remove("churn"),
                session.now,
                stop_churn,
                opts.churn_on_s,
                opts.churn_off_s,
            )
        )
        faults.append(await _rtsp_restart(rig, session, main))
        await asyncio.sleep(opts.gap_s)
        faults.append(await _camera_stall(rig, session, opts.stall_s))
        await asyncio.sleep(opts.gap_s)
        if rig.broker is not None:
            faults.append(await _broker_down(rig, session, steady, opts.broker_outage_s, opts.short))
            await asyncio.sleep(opts.gap_s)
        if rig.triton is not None:
            faults.append(await _triton_restart(rig, session, steady))
            await asyncio.sleep(opts.gap_s + 2)
    finally:
        stop_churn.set()
        for f in faults:
            if (task := f.extra.pop("_task", None)) is not None:
                await task
        cycles = await churn_task if churn_task is not None else []
        ended = session.now()
        summary = await session.stop()
        libav.removeHandler(av_errors)
        av.logging.set_level(None)
    tally.add(session, summary, rig)
    limit = 20.0 if opts.short else 60.0
    probe = session.probe
    for fault in faults:
        for sid in fault.affected:
            fault.measure(sid, probe.series(sid), limit)
    injected = list(faults)
    corrupt = _corrupt_faults(av_errors, probe.series("corrupt0"), summary, limit, opts.warmup_s, injected)
    faults += corrupt
    steady_bins = [probe.series(sid) for sid in steady]
    faults.append(_churn_fault(cycles, probe.series("churn"), opts.churn_on_s, injected, steady_bins))
    skipped = [
        {
            "kind": "redis_restart",
            "why": "no worker or Redis registry in this run: the graph runs in-process with streams "
            "added by the runner (tests/integration/test_workers.py restarts Redis under workers)",
        }
    ]
    if rig.broker is None:
        skipped.append({"kind": "broker_down", "why": "the graph has no sink.kafka"})
    if rig.triton is None:
        skipped.append({"kind": "triton_restart", "why": "the graph has no infer.triton (or --triton-url)"})
    if not corrupt and any(first >= opts.warmup_s for first, _, _ in av_errors.windows()):
        # the damaged clip's errors came, but each run of them overlapped another fault (its
        # reconnects log decode errors too): its recovery cannot be told apart in this run
        skipped.append(
            {
                "kind": "corrupt_packets",
                "why": "every run of FFmpeg decode errors overlapped another fault: not measured",
            }
        )
    tail = {sid: window_fps(probe.series(sid), round(ended / BIN_S)) for sid in steady}
    usual = {sid: round(mean_fps(probe.series(sid), opts.warmup_s, ended), 1) for sid in steady}
    return {
        "streams": {"main_server": main, "stall_server": ["stall0"], "churn": "churn", "corrupt": "corrupt0"},
        "faults": [f.as_dict() for f in faults],
        "skipped": skipped,
        "fps_last_second": tail,
        "fps_mean": usual,
        "ffmpeg_error_samples": av_errors.samples,
        "churn_cycles": [asdict(c) for c in cycles],
    }


async def _rtsp_restart(rig: Rig, session: Session, affected: list[str], down_s: float = 2.0) -> Fault:
    def disconnects() -> dict[str, int]:  # counted by source.rtsp when its connection breaks
        return {s: session.runtime.metrics.node(s).events.get("disconnects", 0) for s in affected}

    before = disconnects()
    start = session.now()
    await asyncio.to_thread(rig.rtsp.kill)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(rig.rtsp.start)
    log.info("fault rtsp_restart done")
    fault = Fault(
        "rtsp_restart", round(start, 2), round(session.now(), 2), affected, f"killed, down {down_s} s"
    )
    # the proof that the fault reached the streams: frames read ahead (the server sends faster
    # than real time) can hide a 2 s outage from the frame rate; the broken connection cannot hide
    fault.extra["disconnects"] = {s: n - before[s] for s, n in disconnects().items()}
    return fault


async def _camera_stall(rig: Rig, session: Session, stall_s: float) -> Fault:
    assert rig.stall_rtsp is not None
    start = session.now()
    rig.stall_rtsp.pause()
    await asyncio.sleep(stall_s)
    rig.stall_rtsp.resume()
    log.info("fault camera_stall done")
    return Fault("camera_stall", round(start, 2), round(session.now(), 2), ["stall0"], f"SIGSTOP {stall_s} s")


async def _held_still(count: Any, still_s: float) -> int:
    """Wait until `count()` has not changed for `still_s`; its value then."""
    last, still_since = count(), time.monotonic()
    while time.monotonic() - still_since < still_s:
        await asyncio.sleep(0.05)
        if count() != last:
            last, still_since = count(), time.monotonic()
    return int(last)


async def _caught_up_while_frozen(acked: Any, reader: Any) -> bool:
    """With the broker frozen: has the consumer read every event the sink had acknowledged?

    A frozen broker acknowledges nothing new, but acknowledgements it sent just before are
    counted by the sink's publisher thread a little later, and later still on a loaded machine
    (CI runs twice counted 4 more after 1 s and 0.5 s of stillness, streams at 11 fps on 2 busy
    cores, and lost them in the kill). So the count must hold still for 2 s, the consumer must
    have it, and it must still hold 1 s later.
    """
    held = await _held_still(acked, 2.0)
    if reader.unique < held:
        return False
    return await _held_still(acked, 1.0) == held


async def _broker_down(
    rig: Rig, session: Session, affected: list[str], outage_s: float, short: bool
) -> Fault:
    """Kill the broker once the consumer has read all the sink had acknowledged; start it again later.

    The broker keeps nothing across a restart (memory storage): an event acknowledged and not
    yet read when it dies would be lost by the broker, not by the engine. So the broker is
    frozen first (SIGSTOP: no new acknowledgement, what was sent lands), and killed only when
    the consumer has read every acknowledged event; otherwise it is thawed and tried again.
    Any loss left is counted apart (lost_in_broker_restart).
    """
    assert rig.broker is not None
    assert rig.reader is not None
    counters = session.runtime.metrics.node(session.kafka_node or "").events
    reader = rig.reader

    def acked() -> int:
        return counters["sent"] + counters["replayed"]

    start = session.now()
    for _ in range(20):
        for _ in range(200):  # up to 2 s for the consumer to catch up
            if reader.unique >= acked():
                break
            await asyncio.sleep(0.01)
        start = session.now()
        rig.broker.pause()
        if await _caught_up_while_frozen(acked, reader):
            break
        rig.broker.resume()
        await asyncio.sleep(0.2)
    rig.broker.kill()
    acked_at_kill = acked()
    await asyncio.sleep(max(0.0, outage_s - (session.now() - start)))
    read_before_restart = reader.unique
    await asyncio.to_thread(rig.broker.start)
    end = session.now()
    # as an operator would: the topic back with one partition before the producer auto-creates it
    recreated = await asyncio.to_thread(create_topic, rig.broker.bootstrap, rig.topic)
    lost = max(0, acked_at_kill - read_before_restart)
    note = f"killed, down {outage_s} s" + (" (shortened from 30 s: short mode)" if short else "")
    fault = Fault(
        "broker_down",
        round(start, 2),
        round(end, 2),
        affected,
        note,
        extra={
            "acked_at_kill": acked_at_kill,
            "read_before_restart": read_before_restart,
            "lost_in_broker_restart": lost,
            "spooled_by_end": counters["spooled"],
            "topic_recreated_by_runner": recreated,
            "delivery_recovery_s": None,
        },
    )
    target, t0 = counters["accepted"] - lost, time.monotonic()

    async def delivered() -> None:  # beside the next faults: every event accepted by now is read
        if await asyncio.to_thread(reader.wait_for, target, 120.0):
            fault.extra["delivery_recovery_s"] = round(time.monotonic() - t0, 2)

    fault.extra["_task"] = asyncio.create_task(delivered())
    log.info("fault broker_down done")
    return fault


async def _triton_restart(rig: Rig, session: Session, affected: list[str]) -> Fault:
    assert rig.triton is not None
    start = session.now()
    await asyncio.to_thread(rig.triton.stop)
    stopped = session.now()
    await asyncio.to_thread(rig.triton.start)
    log.info("fault triton_restart done")
    return Fault(
        "triton_restart",
        round(start, 2),
        round(session.now(), 2),
        affected,
        f"scripts/triton stop ({stopped - start:.1f} s), then start until ready",
    )


def _disturbed(start_s: float, end_s: float, faults: list[Fault], kinds: set[str]) -> str | None:
    """The injected fault of `kinds` that overlaps [start_s, end_s] (with its recovery), if any."""
    for f in faults:
        until = f.end_s + max([v or 0.0 for v in f.recovery_s.values()] or [0.0]) + 1.0
        if f.kind in kinds and start_s <= until and end_s >= f.start_s - 0.5:
            return f.kind
    return None


# Faults that touch the churn camera (main server; every stream's detections) and those that
# make FFmpeg log decode errors of other streams (reconnects) or take corrupt0's good frames.
CHURN_DISTURBED_BY = {"rtsp_restart", "triton_restart"}
CORRUPT_DISTURBED_BY = {"rtsp_restart", "camera_stall", "triton_restart"}


def _corrupt_faults(
    errors: AvErrorLog,
    bins: list[int],
    summary: dict[str, Any],
    limit: float,
    warmup_s: float,
    injected: list[Fault],
) -> list[Fault]:
    """One fault per run of FFmpeg errors after warm-up, away from the injected faults.

    Only corrupt0's file is damaged, but FFmpeg's messages name no stream: a run of errors
    while another fault disturbs the streams (reconnects also log decode errors) is left out.
    """
    counted = {
        reason: n
        for node in summary["nodes"].values()
        for reason, n in node.get("dropped_by_stream", {}).get("corrupt0", {}).items()
        if "corrupt" in reason
    }
    out = []
    for first, last, n in errors.windows():
        if first < warmup_s or _disturbed(first, last, injected, CORRUPT_DISTURBED_BY):
            continue
        fault = Fault(
            "corrupt_packets",
            round(first, 2),
            round(last, 2),
            ["corrupt0"],
            f"{n} FFmpeg decode errors (concealed by FFmpeg)",
            extra={"engine_corrupt_counters": counted},
        )
        fault.measure("corrupt0", bins, limit)
        out.append(fault)
    return out


def _churn_fault(
    cycles: list[ChurnCycle], bins: list[int], on_s: float, injected: list[Fault], steady: list[list[int]]
) -> Fault:
    """stream_churn: per cycle, the time from add_stream to the stream at RECOVERED_FPS.

    A cycle cut short by the end of the run, or one an injected fault disturbed (the churn
    camera is on the main RTSP server), is left out of the figure (kept in the list). The
    steady streams' rate during a cycle is its baseline (below real time on a loaded machine).
    """
    done = []
    for c in cycles:
        if c.removed_s is None or c.removed_s - c.added_s < on_s - 0.2:
            continue
        c.disturbed_by = _disturbed(c.added_s, c.removed_s, injected, CHURN_DISTURBED_BY)
        c.reached_fps_s = recovery_s(bins, c.added_s, on_s)
        others = [mean_fps(b, c.added_s, c.removed_s) for b in steady]
        c.steady_fps = round(min(others), 1) if others else None
        target = min(RECOVERED_FPS, 0.9 * c.steady_fps) if c.steady_fps else RECOVERED_FPS
        c.reached_steady_rate_s = recovery_s(bins, c.added_s, on_s, target)
        if c.disturbed_by is None:
            done.append(c)
    fault = Fault(
        "stream_churn",
        round(cycles[0].added_s, 2) if cycles else 0.0,
        round(cycles[-1].removed_s or 0.0, 2) if cycles else 0.0,
        ["churn"],
        f"{len(cycles)} add/remove cycles of {on_s} s on; {len(done)} undisturbed by other faults",
    )
    times = [c.reached_fps_s for c in done]
    fault.recovery_s["churn"] = None if not done or None in times else max(t or 0.0 for t in times)
    own = [c.reached_steady_rate_s for c in done]
    fault.recovery_to_baseline_s["churn"] = None if not done or None in own else max(t or 0.0 for t in own)
    fault.baseline_fps["churn"] = min((c.steady_fps or 0.0 for c in done), default=0.0)
    fault.extra = {
        "cycles": len(cycles),
        "measured_cycles": len(done),
        "reached_fps": sum(t is not None for t in times),
        "max_remove_s": max((c.remove_took_s or 0.0) for c in cycles) if cycles else None,
        "threshold_fps": RECOVERED_FPS,
    }
    return fault
