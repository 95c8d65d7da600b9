"""The GPU graph's host side on a machine without a GPU: the GPU stood in for, the rest real.

    python loadtests/gpu_bench.py --rehearse [--streams 64] [--processes 1,auto] [--seconds 15]

The GPU goal (64 streams of 1080p30 held at real time, p95 < 150 ms) fails on the host as well
as on the device: every frame costs Python work (demux, Annex B, postprocess, tracking, events,
the runtime's hops), 64 decoder threads and the batching nodes share one GIL, and the event loop
must keep 1,920 frames a second moving. A rehearsal runs the benchmark's own graph (same nodes,
queues, batching, workers, processes; loadtests/bench_graph.py's `graph_yaml`) with only the GPU's
work replaced:

- `rehearsal.decode` is `decode.nvdec` (per-stream threads, Annex B rewriting, packet tags, error
  handling: all real) with a decoder session that books the simulated NVDEC engine instead of
  calling PyNvVideoCodec, and returns a 1080p placeholder image;
- `rehearsal.preprocess` is `preprocess.torch` (batching, pinned threads) whose transform books
  the simulated SMs and sets the real letterbox;
- `rehearsal.infer` is `infer.torch` (batch splitting, pinned threads, output fan-out) whose model
  books the simulated SMs and returns CenterFace's real outputs for the clip (recorded once on
  this CPU with onnxruntime), so postprocess.centerface, track.bytetrack and the events sink do
  exactly the work they would do on the GPU machine.

The simulated GPU is a set of serial engines (NVDEC, SMs). A call books the engine from the time
it is free, for its service time, and sleeps until then without the GIL, as a CUDA call waits
for the device; before that it spins for its host time with the GIL held, the Python and driver
work a real call does on the CPU. Service times default to what the one GPU run so far measured
on an H100 (NVDEC 4,040 fps at 64 streams; CenterFace fp16 at batch 32: 2,897 fps); host times
are estimates (`SimTimes`), and `FG_REHEARSAL_TIMES` (JSON) overrides any field. With several
processes each gets its share of one device (service times x processes), as contexts time-slice;
`FG_REHEARSAL_PROCESSES=K` gives a single process the share of one of K.

What it can say: whether the host side holds N streams at real time when the GPU keeps its
measured pace, the CPU each thread group uses (cpu_cores_by_thread) and where the GIL goes
(hot_stacks). What it cannot: anything about the device
(its real latency under load, memory, NVDEC sessions, CUDA context switches).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from engine.frame import Frame
from engine.registry import register
from operators.gpu_decode import NvDecode
from operators.gpu_preprocess import TorchPreprocess, placement
from operators.infer_torch import TorchInfer

TIMES_ENV = "FG_REHEARSAL_TIMES"  # JSON: SimTimes fields to override
PRESET_ENV = "FG_REHEARSAL_GPU"  # h100 (default) | h200: measured service times of that device
SHARE_ENV = "FG_REHEARSAL_PROCESSES"  # graph processes sharing the simulated device
OUTPUTS_ENV = "FG_REHEARSAL_OUTPUTS"  # .npz of CenterFace's recorded outputs, one row per frame
SUBSTITUTES = {
    "op: decode.nvdec": "op: rehearsal.decode",
    "op: preprocess.torch": "op: rehearsal.preprocess",
    "op: infer.torch": "op: rehearsal.infer",
}
IMAGE = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (1080, 1920, 3))  # the CUDA frame's shape only


@dataclass(frozen=True)
class SimTimes:
    """Service times of the simulated GPU (device) and host time per call (GIL held), in µs."""

    decode_us: float = 1e6 / 4040  # NVDEC, per frame: 4,040 fps at 64 streams (gpu_bench, H100)
    preprocess_us_per_frame: float = 40.0  # letterbox + normalise of one 1080p frame (estimate)
    model_us_fixed: float = 1500.0  # CenterFace fp16 forward pass: fixed part (estimate) ...
    model_us_per_frame: float = 298.0  # ... + per frame: batch 32 = 11.0 ms, 2,897 fps (H100)
    decode_host_us: float = 50.0  # PacketData, Decode call, from_dlpack, clone, sync (estimate)
    preprocess_host_us: float = 250.0  # per batch: torch ops of the letterbox (estimate)
    infer_host_us: float = 300.0  # per batch: stack, copy, graph replay, outputs to host (estimate)

    @classmethod
    def from_env(cls) -> SimTimes:
        """The preset of $FG_REHEARSAL_GPU (h100 by default), overridden by $FG_REHEARSAL_TIMES;
        KeyError names an unknown preset or field."""
        preset = os.environ.get(PRESET_ENV) or "h100"
        if preset not in PRESETS:
            raise KeyError(f"{PRESET_ENV}: unknown device {preset!r}; known: {sorted(PRESETS)}")
        raw = json.loads(os.environ.get(TIMES_ENV) or "{}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyError(f"{TIMES_ENV}: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**{**PRESETS[preset], **{k: float(v) for k, v in raw.items()}})

    def as_dict(self) -> dict[str, float]:
        """The times for a report, to 0.1 µs."""
        return {k: round(v, 1) for k, v in asdict(self).items()}


# Measured service times per device (the rest of SimTimes stays at its defaults). H100: this
# project's gpu_bench run (NVDEC 4,040 fps at 64 streams; CenterFace fp16 2,897 fps at batch 32).
# H200: ../shared/docs/gpu.md (NVDEC 2,300-2,700 fps at 16-64 streams, taken as 2,500; CenterFace
# fp16 4,551 fps at batch 32: 32 frames in 7.03 ms = 1.5 ms + 173 µs per frame).
PRESETS: dict[str, dict[str, float]] = {
    "h100": {},
    "h200": {"decode_us": 1e6 / 2500, "model_us_per_frame": (32e6 / 4551 - 1500.0) / 32},
}


class SimGpu:
    """Serial engines of one (share of a) device: a call books its engine and waits for its turn."""

    def __init__(self, times: SimTimes, share: int = 1) -> None:
        self.times = times
        self.share = max(1, share)  # this process's share of the device: 1/share of its speed
        self._lock = threading.Lock()
        self._free_at: dict[str, float] = {"nvdec": 0.0, "sm": 0.0}
        self.busy_s: dict[str, float] = {"nvdec": 0.0, "sm": 0.0}

    def call(self, engine: str, device_us: float, host_us: float) -> None:
        """Spin `host_us` holding the GIL, then wait (GIL released) for `device_us` of `engine`."""
        if host_us > 0:
            spin_until = time.perf_counter() + host_us / 1e6
            while time.perf_counter() < spin_until:
                pass
        service_s = device_us * self.share / 1e6
        with self._lock:
            now = time.perf_counter()
            done = max(now, self._free_at[engine]) + service_s
            self._free_at[engine] = done
            self.busy_s[engine] += service_s
        wait_s = done - time.perf_counter()
        if wait_s > 0:
            time.sleep(wait_s)


_gpu: SimGpu | None = None
_gpu_lock = threading.Lock()


def gpu() -> SimGpu:
    """This process's simulated device (times and share from the environment)."""
    global _gpu
    with _gpu_lock:
        if _gpu is None:
            _gpu = SimGpu(SimTimes.from_env(), int(os.environ.get(SHARE_ENV, "1")))
        return _gpu


def rehearsal_yaml(gpu_graph: str) -> str:
    """The benchmark's GPU graph with the three GPU operators swapped for their stand-ins."""
    out = gpu_graph
    for real, stand_in in SUBSTITUTES.items():
        if real not in out:
            raise ValueError(f"the benchmark graph has no '{real}' node: the rehearsal is out of date")
        out = out.replace(real, stand_in)
    return out


# --- stand-ins --------------------------------------------------------------------------------


class _Session:
    """A decoder session that books NVDEC for each access unit; a frame per packet (no B-frames)."""

    def __init__(self, device: SimGpu) -> None:
        self.device = device

    def decode(self, payload: bytes, key: int) -> list[tuple[int | None, Any]]:
        t = self.device.times
        self.device.call("nvdec", t.decode_us, t.decode_host_us)
        return [(key, IMAGE)]

    def flush(self) -> list[tuple[int | None, Any]]:
        return []


class _Backend:
    def __init__(self, device: SimGpu) -> None:
        self.device = device

    def open(self, codec: str) -> _Session:
        return _Session(self.device)


@register("rehearsal.decode")
class RehearsalDecode(NvDecode):
    """decode.nvdec with the simulated NVDEC in place of PyNvVideoCodec."""

    async def setup(self) -> None:
        self.backend = _Backend(gpu())


@register("rehearsal.preprocess")
class RehearsalPreprocess(TorchPreprocess):
    """preprocess.torch whose transform books the simulated SMs; the letterbox is the real one."""

    device: SimGpu

    async def setup(self) -> None:
        self.device = gpu()

    def _run(self, frames: list[Frame]) -> None:
        t = self.device.times
        self.device.call("sm", t.preprocess_us_per_frame * len(frames), t.preprocess_host_us)
        for f in frames:
            f.letterbox = placement(f.width, f.height, self.config)[0]
            f.tensor = np.int64(f.seq)  # a token: the model stand-in picks recorded outputs by it


class RecordedModel:
    """CenterFace's outputs for the clip's first frames, replayed back and forth by frame number."""

    def __init__(self, path: Path, device: SimGpu) -> None:
        with np.load(path) as data:
            self.outputs = {name: data[name] for name in data.files}
        self.frames = len(next(iter(self.outputs.values())))
        self.output_names = list(self.outputs)
        self.device = device

    def row(self, seq: int) -> int:
        """Frame numbers walk the recording forwards, then backwards: motion with no jumps."""
        period = max(1, 2 * self.frames - 2)
        i = seq % period
        return i if i < self.frames else period - i

    def run(self, tensors: list[Any], names: list[str]) -> dict[str, np.ndarray]:
        t = self.device.times
        self.device.call("sm", t.model_us_fixed + t.model_us_per_frame * len(tensors), t.infer_host_us)
        rows = [self.row(int(s)) for s in tensors]
        return {n: self.outputs[n][rows] for n in names}


@register("rehearsal.infer")
class RehearsalInfer(TorchInfer):
    """infer.torch whose model books the simulated SMs and returns recorded CenterFace outputs."""

    async def setup(self) -> None:
        path = os.environ.get(OUTPUTS_ENV)
        if not path:
            raise RuntimeError(
                f"rehearsal.infer: ${OUTPUTS_ENV} names no recording (gpu_bench --rehearse sets it)"
            )
        model = RecordedModel(Path(path), gpu())
        self.model = model  # type: ignore[assignment]  # duck-typed: run() and output_names
        self.output_names = self.config.output_names or model.output_names


def record_outputs(clip: Path, out: Path, frames: int = 30) -> Path:
    """CenterFace's outputs (onnxruntime, this CPU) for the clip's first frames, into `out` (.npz)."""
    if out.exists():
        return out
    from loadtests.host_budget import model_outputs

    outs, _ = model_outputs(clip, frames)
    names = list(outs[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **{n: np.stack([o[n] for o in outs]) for n in names})
    tmp.replace(out)
    return out


def device_busy() -> dict[str, float]:
    """Seconds each simulated engine was booked in this process (its share of the device)."""
    return {k: round(v, 2) for k, v in gpu().busy_s.items()}


def reset_gpu() -> None:
    """Forget the simulated device's bookings (a new graph run in this process)."""
    global _gpu
    with _gpu_lock:
        _gpu = None
