"""`monitor.drift` on synthetic streams made from a real photo: onsets found fast, normal streams quiet.

A "normal" stream is scikit-image's astronaut moving over a blurred backdrop of itself, with
sensor noise and a slow +-8% exposure swing; perturbations start at ONSET_S (after the reference).
Frames go straight through the operator (no pacing): stream time comes from pts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engine.frame import Control, ControlKind, Detections, Frame, Item, StreamInfo, now_ns
from engine.metrics import NodeMetrics
from engine.registry import Emit, OperatorContext, Source, register
from engine.samples import photo_cached, scene
from engine.spec import StrictModel
from engine.testing import CollectOperator, run_graph
from operators.drift import BINS, DriftConfig, DriftMonitor
from operators.drift_stats import Alarm, Bins, psi

W, H, FPS = 480, 270, 15
ONSET_S = 7.0
BOUND_S = 2.0  # a dark, black, frozen or blurred camera is reported within this much stream time
_rng = np.random.default_rng(0)
_NOISE = [_rng.normal(0, 3, (H, W, 3)).astype(np.float32) for _ in range(8)]
_BACKDROP = cv2.GaussianBlur(cv2.resize(photo_cached(), (W, H)), (0, 0), 12)

Image = np.ndarray


def normal(i: int) -> Image:
    """Frame i of a healthy camera: motion, sensor noise, exposure drifting +-8% over ~30 s."""
    gain = 1 + 0.08 * np.sin(i / FPS * 0.2)
    image = scene(W, H, i, FPS, _BACKDROP).astype(np.float32) * gain + _NOISE[i % len(_NOISE)]
    return np.clip(image, 0, 255).astype(np.uint8)


def faces(i: int) -> Detections:
    """1-3 faces scored 0.6-0.95: a detector's usual output."""
    n = 1 + (i // 7) % 3
    score = np.random.default_rng(i).uniform(0.6, 0.95, n).astype(np.float32)
    return Detections(np.zeros((n, 4), np.float32), score, np.zeros(n, np.int64))


PERTURB: dict[str, Callable[[Image, int], Image]] = {
    "dark": lambda im, i: (im * 0.3).astype(np.uint8),
    "black": lambda im, i: np.clip(_NOISE[i % 8][:, :, :1] * 0.3 + 4, 0, 255).astype(np.uint8).repeat(3, 2),
    "blur": lambda im, i: cv2.GaussianBlur(im, (0, 0), 2.0),
    "frozen": lambda im, i: normal(int(ONSET_S * FPS)),
}


def make_op(**config: Any) -> DriftMonitor:
    return DriftMonitor(DriftConfig(**config), OperatorContext("drift", NodeMetrics("drift")))


async def stream(
    op: DriftMonitor,
    seconds: float,
    image: Callable[[int], Image],
    detections: Callable[[int], Detections | None] = faces,
) -> list[dict[str, Any]]:
    """Feed `seconds` of frames (pts in 1/90000 s); return every event raised, in order."""
    await op.on_stream_start(StreamInfo("cam", width=W, height=H, fps=FPS, time_base=Fraction(1, 90000)))
    events: list[dict[str, Any]] = []
    for i in range(int(seconds * FPS)):
        frame = Frame("cam", i, i * 90000 // FPS, now_ns(), image(i))
        frame.detections = detections(i)
        (out,) = await op.process(frame)
        assert out is frame
        events.extend(frame.events)
    return events


def onset(kind: str, events: list[dict[str, Any]]) -> float:
    times = [e["t_s"] for e in events if e["type"] == "drift" and e["kind"] == kind]
    assert times, f"no {kind} event in {events}"
    return float(times[0]) - ONSET_S


async def test_a_normal_stream_raises_nothing_over_a_minute() -> None:
    op = make_op()  # defaults: a 10 s reference
    events = await stream(op, 60, normal)
    assert events == []
    assert not [k for k in op.ctx.metrics.events if k.startswith("drift")]
    state = op.streams["cam"]
    assert set(state.reference) == {"brightness", "contrast", "sharpness", "detections", "score"}
    # the margin: every PSI at the end stays well under the threshold
    for name, ref in state.reference.items():
        limit = op.config.output_psi_threshold if name in ("detections", "score") else op.config.psi_threshold
        assert psi(ref, state.windows[name].counts, BINS[name].tolerance) < 0.5 * limit, name


@pytest.mark.parametrize("kind", list(PERTURB))
async def test_a_camera_going_dark_black_blurred_or_frozen_is_reported_within_two_seconds(kind: str) -> None:
    op = make_op(reference_s=5)
    perturb = PERTURB[kind]
    events = await stream(
        op, ONSET_S + 6, lambda i: normal(i) if i < ONSET_S * FPS else perturb(normal(i), i)
    )
    delay = onset(kind, events)
    print(f"{kind}: reported {delay:.2f} s after onset; all: {[(e['kind'], e['t_s']) for e in events]}")
    assert 0 <= delay < BOUND_S
    raised = [e for e in events if e["type"] == "drift" and e["kind"] == kind]
    assert len(raised) == 1  # once per onset, not once per frame
    assert op.ctx.metrics.events[f"drift_{kind}"] == 1
    event = raised[0]
    assert event["stream_id"] == "cam"
    assert isinstance(event["value"], float)
    assert isinstance(event["threshold"], float)
    assert not [e for e in events if e["t_s"] < ONSET_S]  # nothing before the change


async def test_recovery_is_cleared_once_and_a_new_onset_raises_again() -> None:
    op = make_op(reference_s=5, clear_s=1.0)
    dark = {*range(int(7 * FPS), int(10 * FPS)), *range(int(14 * FPS), int(16 * FPS))}
    events = await stream(op, 19, lambda i: (normal(i) * 0.3).astype(np.uint8) if i in dark else normal(i))
    dark_events = [(e["type"], e["t_s"]) for e in events if e["kind"] == "dark"]
    assert [t for t, _ in dark_events] == ["drift", "drift.cleared", "drift", "drift.cleared"]
    cleared_after = dark_events[1][1] - 10
    assert cleared_after >= 1.0
    assert cleared_after < 2.0
    assert 14 <= dark_events[2][1] < 14 + BOUND_S
    assert op.ctx.metrics.events["drift_cleared_dark"] == 2


async def test_output_drift_detections_vanish_and_scores_sag() -> None:
    op = make_op(reference_s=5)
    events = await stream(op, ONSET_S + 4, normal, lambda i: faces(i) if i < ONSET_S * FPS else Detections())
    print(
        f"detections_psi {onset('detections_psi', events):.2f} s", [(e["kind"], e["value"]) for e in events]
    )
    assert onset("detections_psi", events) < BOUND_S
    op = make_op(reference_s=5)

    def weak(i: int) -> Detections:
        d = faces(i)
        return d if i < ONSET_S * FPS else Detections(d.xyxy, d.score * 0.5, d.class_id)

    events = await stream(op, ONSET_S + 4, normal, weak)
    print(f"score_psi {onset('score_psi', events):.2f} s")
    assert onset("score_psi", events) < BOUND_S
    assert "detections_psi" not in {e["kind"] for e in events}


async def test_a_saved_reference_judges_a_stream_from_its_first_frame(tmp_path: Path) -> None:
    op = make_op(reference_s=3, save_reference="ref-{stream}.json")
    op.ctx.output_dir = tmp_path
    await stream(op, 4, normal)
    saved = json.loads((tmp_path / "ref-cam.json").read_text())
    assert saved["stats"]["brightness"]["median"] > 0
    later = make_op(reference=str(tmp_path / "ref-{stream}.json"))
    events = await stream(later, 3, lambda i: (normal(i) * 0.3).astype(np.uint8))
    dark = [e for e in events if e["kind"] == "dark"]
    assert dark
    assert dark[0]["t_s"] <= 1.0  # no 10 s of learning first: the saved reference applies at once
    with pytest.raises(Exception, match="drift reference"):
        await make_op(reference=str(tmp_path / "missing.json")).on_stream_start(StreamInfo("cam"))


def test_per_frame_cost_is_a_few_gray_conversions_of_the_frame() -> None:
    """The monitor's cost per 720p frame, against a baseline timed beside it on the same machine
    (one full-frame RGB->gray conversion: a machine's speed and load cancel out). It measured about
    1 to 1.5 ms on a 2-core CI machine, 4 to 5 conversions; a regression to full-frame statistics
    would cost far more."""
    base = cv2.resize(normal(0), (1280, 720))
    frames = [np.ascontiguousarray(np.roll(base, 5 * k, axis=1)) for k in range(8)]
    op = make_op(reference_s=2)

    async def run() -> tuple[list[float], list[float]]:
        await op.on_stream_start(StreamInfo("cam", time_base=Fraction(1, 30)))
        spent, baseline = [], []
        for i in range(300):
            frame = Frame("cam", i, i, 0, frames[i % 8])
            frame.detections = faces(i)
            t = time.perf_counter()
            await op.process(frame)
            spent.append(time.perf_counter() - t)
            t = time.perf_counter()
            cv2.cvtColor(frames[i % 8], cv2.COLOR_RGB2GRAY)
            baseline.append(time.perf_counter() - t)
        return spent, baseline

    spent_s, baseline_s = asyncio.run(run())
    ratio = float(np.median(spent_s[60:]) / np.median(baseline_s[60:]))
    print(
        f"monitor.drift per 720p frame: median {np.median(spent_s[60:]) * 1e3:.3f} ms, {ratio:.1f} gray conversions"
    )
    assert ratio < 10


def test_psi_bins_and_alarm() -> None:
    b = Bins(0, 8, 16)
    idx, w = b.soft(np.asarray([3.3, -1.0, 100.0]))
    counts = np.bincount(idx, w, minlength=16)
    assert counts.sum() == pytest.approx(3.0)
    h = b.histogram(np.full(50, 5.0))
    assert psi(h, h) == 0.0
    assert psi(h, b.histogram(np.full(50, 5.1))) < 0.05  # a small shift costs little
    assert psi(h, b.histogram(np.full(50, 6.0))) > 2.0  # an octave costs a lot
    alarm = Alarm()
    assert [alarm.update(c, t, 0.5, 1.0) for c, t in [(True, 0), (True, 0.4), (True, 0.5), (True, 0.6)]] == [
        None,
        None,
        "raise",
        None,
    ]
    assert [alarm.update(c, t, 0.5, 1.0) for c, t in [(False, 1), (True, 1.5), (False, 2), (False, 3)]] == [
        None,
        None,
        None,
        "clear",
    ]


class _ScenarioConfig(StrictModel):
    seconds: float = 10
    dark_from_s: float = 6


@register("test.scenario")
class _ScenarioSource(Source[_ScenarioConfig]):
    """A normal camera that goes dark at `dark_from_s` (stream time; emitted unpaced)."""

    Config = _ScenarioConfig

    async def run(self, emit: Emit) -> None:
        sid = self.ctx.stream_id
        await emit(Control(ControlKind.START, sid, StreamInfo(sid, "raw", W, H, FPS, Fraction(1, FPS))))
        for i in range(int(self.config.seconds * FPS)):
            image = normal(i)
            await emit(Frame(sid, i, i, now_ns(), image if i < self.config.dark_from_s * FPS else image // 4))
        await emit(Control(ControlKind.END, sid))


async def test_in_a_graph_events_ride_on_frames_and_are_counted() -> None:
    graph = """
name: drift
sources:
  - {id: cam0, url: x, op: test.scenario}
  - {id: cam1, url: x, op: test.scenario, config: {dark_from_s: 100}}
nodes:
  - {id: drift, op: monitor.drift, inputs: [sources], config: {reference_s: 4}}
  - {id: out, op: test.collect, inputs: [drift]}
"""
    runtime, summary = await run_graph(graph)
    collect = runtime.operator("out")
    assert isinstance(collect, CollectOperator)
    frames: Sequence[Item] = collect.items
    raised = [(f.stream_id, f.seq, e["kind"]) for f in frames if isinstance(f, Frame) for e in f.events]
    assert ("cam0", "dark") in {(s, k) for s, _, k in raised}
    assert not [r for r in raised if r[0] == "cam1"]  # streams are judged apart
    first_dark = min(seq for s, seq, k in raised if k == "dark")
    assert (first_dark - 6 * FPS) / FPS < BOUND_S
    assert summary["nodes"]["drift"]["events"]["drift_dark"] == 1
