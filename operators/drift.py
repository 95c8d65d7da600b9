"""`monitor.drift`: per stream, notice when the input or the output stops looking like it did.

Each frame gives brightness (mean luma), contrast (luma std), sharpness (variance of the
Laplacian) and motion (mean abs difference to the previous frame) of a small gray copy
(operators/drift_stats.py; ~0.3 ms a 720p frame), and, when it carries detections, their count
and scores. The first `reference_s` seconds of each stream (or a saved `reference`) are the
reference; afterwards:

  black     mean luma < black_luma and luma std < black_std          (no reference needed)
  frozen    motion < frozen_epsilon for frozen_s                     (no reference needed)
  dark      brightness < dark_ratio x the reference's median
  blur      sharpness/contrast^2 < blur_ratio x the reference's median (a gain change keeps it)
  <stat>_psi  PSI of the last `window_s` against the reference above psi_threshold (brightness,
            contrast, sharpness) or output_psi_threshold (detections per frame, score per detection)

A condition raises one `{"type": "drift", "kind", "value", "threshold", ...}` in frame.events
after holding `hold_s` (frozen: at frozen_s; PSI, a windowed figure already: at once), and one
`{"type": "drift.cleared", "kind", ...}` once it has been absent `clear_s`; metrics events
count `drift_<kind>` and `drift_cleared_<kind>`.
Time is stream time (pts x time base; capture time where frames have no pts).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from engine.errors import OperatorError
from engine.frame import Frame, Item, StreamInfo
from engine.registry import Operator, OperatorContext
from engine.spec import StrictModel
from operators.drift_stats import Alarm, Bins, Rolling, frame_stats, log_scale, motion, psi

Kind = Literal[
    "black",
    "dark",
    "frozen",
    "blur",
    "brightness_psi",
    "contrast_psi",
    "sharpness_psi",
    "detections_psi",
    "score_psi",
]
KINDS: tuple[Kind, ...] = typing.get_args(Kind)
BINS = {  # brightness and contrast as log2(1 + x): half-octave bins (a 41% step each)
    "brightness": Bins(0, 8, 16),
    "contrast": Bins(0, 7.5, 15),
    "sharpness": Bins(-10, 2, 24),  # log2 of sharpness / contrast^2: half-octave bins
    "detections": Bins(-0.5, 15.5, 16, tolerance=1),  # one bin per count, 15+ in the last
    "score": Bins(0, 1, 10, tolerance=1),
}
_LOG = ("brightness", "contrast")
_MAX_GAP_S = 5.0  # a larger pts jump (a reconnect, a wrap) advances stream time by one frame


class DriftConfig(StrictModel):
    """Options of `monitor.drift`."""

    reference_s: float = Field(10.0, gt=0, description="The first seconds of a stream are its reference.")
    reference: str = Field("", description="Load the reference from this JSON ({stream}: the stream id).")
    save_reference: str = Field("", description="Write the learnt reference here, relative to --output.")
    window_s: float = Field(5.0, gt=0, description="Rolling window compared with the reference (PSI).")
    hold_s: float = Field(0.5, ge=0, description="A condition must last this long to raise an event.")
    clear_s: float = Field(2.0, ge=0, description="And be absent this long to clear it.")
    width: int = Field(320, ge=16, le=1920, description="Width of the gray copy the figures come from.")
    black_luma: float = Field(20.0, ge=0, le=255, description="black: mean luma below this...")
    black_std: float = Field(8.0, ge=0, description="...and luma std below this.")
    dark_ratio: float = Field(0.5, gt=0, lt=1, description="dark: brightness below this x the reference.")
    blur_ratio: float = Field(
        0.35, gt=0, lt=1, description="blur: relative sharpness below this x the reference."
    )
    frozen_epsilon: float = Field(
        0.1, ge=0, description="frozen: mean abs frame difference (0..255) below this..."
    )
    frozen_s: float = Field(1.0, gt=0, description="...for this long.")
    psi_threshold: float = Field(
        0.5, gt=0, description="Image figures' PSI that is drift (0.5: ~0.4 octave; lighting varies)."
    )
    output_psi_threshold: float = Field(0.25, gt=0, description="Detections' and scores' PSI that is drift.")
    psi_min_span_s: float = Field(1.0, ge=0, description="PSI is judged once the window spans this long.")
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS), description="Conditions to watch.")
    clock: Literal["pts", "capture"] = Field("pts", description="Stream time from pts, or capture time.")


@dataclass
class _Stream:
    info: StreamInfo
    windows: dict[str, Rolling]
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # name -> counts, when ready
    medians: dict[str, float] = field(default_factory=dict)
    learning: dict[str, list[float]] = field(default_factory=dict)  # values seen during the reference
    alarms: dict[str, Alarm] = field(default_factory=dict)
    clock: float = 0.0
    last_t: float | None = None
    last_dt: float = 0.0
    previous: np.ndarray | None = None
    frozen_since: float | None = None


class DriftMonitor(Operator[DriftConfig]):
    """Frames pass unchanged, with drift events added where a condition starts or ends."""

    consumes, produces = "frames", "same"
    Config = DriftConfig

    def __init__(self, config: DriftConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.streams: dict[str, _Stream] = {}

    async def on_stream_start(self, info: StreamInfo) -> None:
        windows = {name: Rolling(bins, self.config.window_s) for name, bins in BINS.items()}
        stream = _Stream(info, windows)
        if self.config.reference:
            stream.reference, stream.medians = self._load(self.config.reference.format(stream=info.stream_id))
        self.streams[info.stream_id] = stream

    async def on_stream_reset(self, info: StreamInfo) -> Sequence[Item]:
        """A reconnect: keep the reference, forget the last frame and the time anchor."""
        stream = self.streams.get(info.stream_id)
        if stream is not None:
            stream.info, stream.previous, stream.last_t, stream.frozen_since = info, None, None, None
        return ()

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self.streams.pop(stream_id, None)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        if not isinstance(item, Frame):
            raise TypeError(f"monitor.drift takes frames, got {type(item).__name__}")
        stream = self.streams.get(item.stream_id)
        if stream is None:
            await self.on_stream_start(StreamInfo(item.stream_id))
            stream = self.streams[item.stream_id]
        now = self._tick(stream, item)
        values: dict[str, float | None] = dict.fromkeys(("brightness", "contrast", "sharpness", "motion"))
        if isinstance(item.image, np.ndarray):
            st = frame_stats(item.image, item.pixel_format, self.config.width)
            values |= {"brightness": st.brightness, "contrast": st.contrast, "sharpness": st.log_sharpness()}
            values["motion"] = motion(st.gray, stream.previous)
            stream.previous = st.gray
        else:
            self.ctx.metrics.events["drift_input_skipped"] += 1  # a GPU frame: output figures only
        det = item.detections
        scores = None
        if det is not None and not det.degraded:
            values["detections"] = float(len(det))
            scores = det.score.astype(np.float64)
        for name in ("brightness", "contrast", "sharpness", "detections"):
            v = values.get(name)
            if v is not None:
                self._observe(stream, name, now, np.asarray([log_scale(v) if name in _LOG else v]))
        if scores is not None:
            self._observe(stream, "score", now, scores)
        if not stream.reference and now >= self.config.reference_s:
            self._freeze_reference(stream)
        self._judge(stream, item, now, values)
        return (item,)

    def _tick(self, stream: _Stream, frame: Frame) -> float:
        """Stream seconds since the stream's first frame, monotonic across resets and pts jumps."""
        tb = stream.info.time_base
        if self.config.clock == "pts" and frame.pts is not None and tb:
            t = float(frame.pts * tb)
        else:
            t = frame.capture_ns / 1e9
        if stream.last_t is not None:
            dt = t - stream.last_t
            if 0 < dt <= _MAX_GAP_S:
                stream.last_dt = dt
            stream.clock += dt if 0 < dt <= _MAX_GAP_S else stream.last_dt
        stream.last_t = t
        return stream.clock

    def _observe(self, stream: _Stream, name: str, now: float, values: np.ndarray) -> None:
        stream.windows[name].add(now, values)
        if not stream.reference:
            stream.learning.setdefault(name, []).extend(values.tolist())

    def _freeze_reference(self, stream: _Stream) -> None:
        for name, values in stream.learning.items():
            if values:
                stream.reference[name] = BINS[name].histogram(np.asarray(values))
                stream.medians[name] = float(np.median(values))
        stream.learning.clear()
        if self.config.save_reference and stream.reference:
            path = self.ctx.output_dir / self.config.save_reference.format(stream=stream.info.stream_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {
                name: {
                    "bins": [b.lo, b.hi, b.n],
                    "counts": stream.reference[name].tolist(),
                    "median": stream.medians[name],
                }
                for name, b in BINS.items()
                if name in stream.reference
            }
            path.write_text(
                json.dumps({"drift_reference": 1, "reference_s": self.config.reference_s, "stats": doc})
            )

    def _load(self, location: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        try:
            stats: dict[str, Any] = json.loads(Path(location).read_text())["stats"]
            counts = {n: np.asarray(s["counts"], np.float64) for n, s in stats.items() if n in BINS}
            medians = {n: float(s["median"]) for n, s in stats.items() if n in BINS}
            if any(
                len(c) != BINS[n].n or stats[n]["bins"] != [BINS[n].lo, BINS[n].hi, BINS[n].n]
                for n, c in counts.items()
            ):
                raise ValueError("its bins differ from this version's")
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise OperatorError(f"node {self.ctx.node_id}: drift reference {location}: {e}") from e
        return counts, medians

    def _conditions(
        self, stream: _Stream, now: float, v: dict[str, float | None]
    ) -> dict[str, tuple[bool, float, float] | None]:
        """kind -> (condition, value, threshold), or None where it cannot be judged now."""
        cfg, med = self.config, stream.medians
        out: dict[str, tuple[bool, float, float] | None] = dict.fromkeys(cfg.kinds)
        b, c, s, m = v["brightness"], v["contrast"], v["sharpness"], v["motion"]
        if b is not None and c is not None:
            out["black"] = (b < cfg.black_luma and c < cfg.black_std, b, cfg.black_luma)
            if "brightness" in med:
                limit = cfg.dark_ratio * (2.0 ** med["brightness"] - 1)  # the median, back from log2(1 + x)
                out["dark"] = (b < limit, b, limit)
            if s is not None and "sharpness" in med and c >= cfg.black_std:
                rel, ref = 2.0**s, 2.0 ** med["sharpness"]
                out["blur"] = (rel < cfg.blur_ratio * ref, rel, cfg.blur_ratio * ref)
        if m is not None:
            if m >= cfg.frozen_epsilon:
                stream.frozen_since = None
            elif stream.frozen_since is None:
                stream.frozen_since = now
            held = now - stream.frozen_since if stream.frozen_since is not None else 0.0
            out["frozen"] = (held >= cfg.frozen_s, held, cfg.frozen_s)
        for name in ("brightness", "contrast", "sharpness", "detections", "score"):
            window = stream.windows[name]
            if name in stream.reference and window.span_s() >= cfg.psi_min_span_s:
                value = psi(stream.reference[name], window.counts, BINS[name].tolerance)
                limit = cfg.output_psi_threshold if name in ("detections", "score") else cfg.psi_threshold
                out[f"{name}_psi"] = (value > limit, value, limit)
        return {k: out.get(k) for k in cfg.kinds}

    def _judge(self, stream: _Stream, frame: Frame, now: float, values: dict[str, float | None]) -> None:
        cfg, sid = self.config, frame.stream_id
        for kind, judged in self._conditions(stream, now, values).items():
            if judged is None:
                continue
            condition, value, threshold = judged
            alarm = stream.alarms.setdefault(kind, Alarm())
            onset = now - value if kind == "frozen" else (alarm.since if alarm.since is not None else now)
            hold = 0.0 if kind == "frozen" or kind.endswith("_psi") else cfg.hold_s  # those integrate already
            change = alarm.update(condition, now, hold, cfg.clear_s)
            if change == "raise":
                self.ctx.metrics.events[f"drift_{kind}"] += 1
                event = {"type": "drift", "kind": kind, "stream_id": sid, "value": round(value, 4)}
                event |= {"threshold": round(threshold, 4), "t_s": round(now, 3), "since_s": round(onset, 3)}
                frame.events.append(event)
            elif change == "clear":
                self.ctx.metrics.events[f"drift_cleared_{kind}"] += 1
                frame.events.append(
                    {"type": "drift.cleared", "kind": kind, "stream_id": sid, "t_s": round(now, 3)}
                )
        active = sorted(k for k, a in stream.alarms.items() if a.active)
        if active:
            frame.meta["drift"] = active
