"""What a run does: the mode, its sizes and durations, with defaults for the full and short runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GRAPH = Path(__file__).resolve().parent / "graphs" / "redact_kafka.yaml"
DECODE_ONLY_GRAPH = ROOT / "graphs" / "decode_only.yaml"
Mode = Literal["throughput", "soak", "chaos"]
MODES: tuple[Mode, ...] = ("throughput", "soak", "chaos")

# source.rtsp: notice a dead or hung camera in ~1.5 s, retry within a second
FAST_RECONNECT = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.5,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 1.0,
}
HELD_FPS = 28.0  # throughput: a stream is held at real time at or above this
RECOVERED_FPS = 25.0  # chaos: a stream is back once a 1 s window holds this many good frames


@dataclass
class Options:
    """One run; `Options.defaults(mode, short)` gives every field its value for that mode."""

    mode: Mode
    short: bool
    out: Path
    graph: Path
    decode_only: bool
    width: int
    height: int
    detect_size: tuple[int, int] | None  # (w, h) of the detector input; None: the graph's
    streams: int  # soak: cameras; chaos: plain cameras beside the fault cameras
    steps: list[int]  # throughput: N to try, in order
    step_s: float  # throughput: measured seconds per step (after warm-up)
    duration_s: float  # soak: measured seconds (after warm-up)
    warmup_s: float
    sample_s: float
    broker_outage_s: float
    gap_s: float  # chaos: seconds between faults
    stall_s: float
    leak_every: int  # leak check: every k-th written frame; 0: none
    fps: int = 30
    clip_s: float = 10.0
    churn_on_s: float = 4.0
    churn_off_s: float = 3.0
    triton_url: str | None = None  # use this Triton instead of a private one (not in chaos)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def defaults(cls, mode: Mode, short: bool = False, decode_only: bool = False) -> Options:
        # chaos and soak need streams held at real time; on a 2-core CPU machine face redaction
        # holds no 720p stream at the graph's 640x384 detector input (README), so they run smaller
        small = short or mode in ("chaos", "soak")
        warmup = (
            {"throughput": 4.0, "soak": 10.0, "chaos": 8.0}
            if short
            else {
                "throughput": 6.0,
                "soak": 30.0,
                "chaos": 15.0,
            }
        )
        return cls(
            mode=mode,
            short=short,
            out=ROOT / "out" / "reliability" / (mode + ("-short" if short else "")),
            graph=DECODE_ONLY_GRAPH if decode_only else DEFAULT_GRAPH,
            decode_only=decode_only,
            width=640 if small else 1280,
            height=360 if small else 720,
            # (short: 256x160, so that the CI runs keep real time beside other jobs)
            detect_size=None if decode_only or not small else (256, 160) if short else (320, 192),
            # chaos: plain cameras beside corrupt0, stall0 and churn (none by default)
            streams={"throughput": 1, "soak": 2, "chaos": 0}[mode],
            steps=[1, 2] if short else [1, 2, 3, 4, 6, 8, 12, 16, 24, 32],
            step_s=5.0 if short else 12.0,
            duration_s=25.0 if short else 240.0,
            warmup_s=warmup[mode],
            sample_s=1.0 if mode == "soak" and not short else 0.5,
            broker_outage_s=5.0 if short else 30.0,
            gap_s=6.0 if short else 12.0,
            stall_s=4.0 if short else 6.0,
            leak_every=10 if short else 5,
        )

    def bound_s(self) -> float:
        """The longest a mode may take before the run is abandoned (twice its plan, plus setup)."""
        planned = {
            "throughput": len(self.steps) * (self.warmup_s + self.step_s + 10),
            "soak": self.warmup_s + self.duration_s + 30,
            "chaos": self.warmup_s + 4 * self.gap_s + self.broker_outage_s + self.stall_s + 60,
        }[self.mode]
        return 2 * planned + 300
