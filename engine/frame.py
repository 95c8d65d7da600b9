"""The values that flow along graph edges: packets, frames, detections, stream controls."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def now_ns() -> int:
    """Wall-clock nanoseconds: the clock `capture_ns` and latencies use."""
    return time.time_ns()


@dataclass(frozen=True)
class StreamInfo:
    """What downstream operators need to know about a stream when it starts."""

    stream_id: str
    codec: str = "h264"
    width: int = 0
    height: int = 0
    fps: float = 0.0
    time_base: Fraction = Fraction(1, 90000)
    extradata: bytes | None = None
    url: str = ""  # always the redacted form: never holds a password
    # when the source made it (it had connected): before its first frame's capture time, so a
    # `connected` health event sorts before the stream's first detections
    connected_ns: int = field(default_factory=now_ns, compare=False)


class ControlKind(str, Enum):
    """Lifecycle events that travel in-band, ordered with the stream's data."""

    START = "start"
    RESET = "reset"  # the source reconnected: decoders must start over, state may stay
    LOST = "lost"  # the source lost its stream or cannot reach it, and retries (`reason`: why)
    END = "end"


@dataclass(frozen=True)
class Control:
    """A stream lifecycle event. Never dropped by a queue policy."""

    kind: ControlKind
    stream_id: str
    info: StreamInfo | None = None
    reason: str = ""
    at_ns: int = field(default_factory=lambda: now_ns())  # when it happened (the source made it)


@dataclass(slots=True)
class Packet:
    """One compressed access unit of a stream, as demuxed by a source."""

    stream_id: str
    seq: int
    pts: int | None
    capture_ns: int
    data: Any  # av.Packet (CPU demux) or bytes
    keyframe: bool = False
    trace: Any = None
    emitted_ns: int = 0  # when it last entered an edge queue (stage timing)

    def branch(self) -> Packet:
        """A copy for a second edge out of one node: each edge times its own queue wait."""
        return copy.copy(self)


@dataclass(slots=True)
class Detections:
    """Columnar detections of one frame, in source-frame pixel coordinates."""

    xyxy: FloatArray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    score: FloatArray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_id: IntArray = field(default_factory=lambda: np.zeros((0,), np.int64))
    track_id: IntArray | None = None
    landmarks: FloatArray | None = None  # (N, K, 2)
    masks: Any = None  # (N, H, W) bool, or polygons per detection
    degraded: bool = False  # True: the detector did not run; absence of boxes means nothing

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def unavailable(cls) -> Detections:
        """Detections of a frame the detector could not process (fail-closed consumers act)."""
        return cls(degraded=True)

    def filter(self, keep: npt.NDArray[np.bool_]) -> Detections:
        """The subset where `keep` is True, every column kept aligned."""
        return Detections(
            xyxy=self.xyxy[keep],
            score=self.score[keep],
            class_id=self.class_id[keep],
            track_id=None if self.track_id is None else self.track_id[keep],
            landmarks=None if self.landmarks is None else self.landmarks[keep],
            masks=None if self.masks is None else self.masks[keep],
            degraded=self.degraded,
        )


@dataclass(slots=True)
class Letterbox:
    """How a model input was made from a frame, so boxes can be mapped back."""

    scale: float
    pad_x: float
    pad_y: float
    src_width: int
    src_height: int
    scale_y: float | None = None  # a plain resize stretches: y has a scale of its own

    def to_source(self, xyxy: FloatArray) -> FloatArray:
        """Map model-input coordinates back to source-frame pixels, clipped to the frame."""
        out = xyxy.astype(np.float32, copy=True)
        xs, ys = out[:, 0::2], out[:, 1::2]  # views: the arithmetic lands in `out`
        xs -= np.float32(self.pad_x)
        xs /= np.float32(self.scale)
        ys -= np.float32(self.pad_y)
        ys /= np.float32(self.scale_y or self.scale)
        np.minimum(np.maximum(xs, 0, out=xs), self.src_width, out=xs)  # np.clip, without its overhead
        np.minimum(np.maximum(ys, 0, out=ys), self.src_height, out=ys)
        return out


@dataclass(slots=True)
class Frame:
    """One decoded picture of a stream, and everything operators attach to it."""

    stream_id: str
    seq: int
    pts: int | None
    capture_ns: int
    image: Any  # numpy HWC uint8 on CPU; a CUDA tensor on the GPU path
    pixel_format: str = "rgb24"
    tensor: Any = None  # model input made by preprocess (CHW float)
    letterbox: Letterbox | None = None
    outputs: dict[str, Any] | None = None  # raw model outputs of this frame (no batch axis)
    detections: Detections | None = None
    degraded: set[str] = field(default_factory=set)  # reasons this frame is incomplete
    meta: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # raised by operators: {"type": ..., ...}
    trace: Any = None  # the frame's root OpenTelemetry span (engine.tracing), or None
    emitted_ns: int = 0  # when it last entered an edge queue (stage timing)

    def branch(self) -> Frame:
        """A copy for a second edge out of one node (a fan-out): what operators set or add on one
        branch (tensor, letterbox, outputs, detections, degraded, meta, events) must not appear on
        the other. Pixels and arrays are shared: operators replace them, never write into them."""
        twin = copy.copy(self)
        twin.outputs = None if self.outputs is None else dict(self.outputs)
        twin.degraded, twin.meta, twin.events = set(self.degraded), dict(self.meta), list(self.events)
        return twin

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


Item = Packet | Frame
"""What operators process."""

Message = Packet | Frame | Control
"""What travels on an edge."""
