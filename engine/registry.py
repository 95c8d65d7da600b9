"""Operator base classes and the registry that maps `op:` names to them (imported lazily)."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from engine.frame import Item, Message, StreamInfo
from engine.spec import StrictModel

if TYPE_CHECKING:
    from engine.metrics import NodeMetrics

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class EmptyConfig(StrictModel):
    """For operators without options."""


@dataclass
class OperatorContext:
    """What the runtime gives an operator: its identity, metrics, and helpers."""

    node_id: str
    metrics: NodeMetrics
    device: str = "cpu"
    output_dir: Path = field(default_factory=lambda: Path("out"))
    graph_name: str = ""
    upstream: list[BaseModel] = field(default_factory=list)  # configs of the nodes feeding this one
    tracer: Any = None  # engine.tracing.FrameTracer when the graph traces frames
    pinned_threads: int = 2  # threads of run_pinned (the runtime sets the node's `workers`)
    preflight: bool = False  # set up by `validate --connect`: reach servers, make no output files
    # why each stream ended, as its source said (scrubbed): set by the runtime just before
    # `on_stream_end`, e.g. "end of file", "stopped", "cam0: gave up after 3 reconnects (...)"
    end_reasons: dict[str, str] = field(default_factory=dict)
    end_at_ns: dict[str, int] = field(default_factory=dict)  # when each stream ended, likewise
    _pinned: ThreadPoolExecutor | None = None

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (decode, numpy) in a thread, keeping the event loop free."""
        return await asyncio.to_thread(fn, *args)

    async def run_pinned(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work on this operator's own few threads (GPU work: CUDA contexts, cuDNN
        handles and DALI pipelines belong to threads; a shared pool would spread them over dozens)."""
        if self._pinned is None:
            self._pinned = ThreadPoolExecutor(self.pinned_threads, f"{self.node_id}-pinned")
        return await asyncio.get_running_loop().run_in_executor(self._pinned, fn, *args)

    def close(self) -> None:
        """Release the operator's own threads (the runtime calls it after teardown)."""
        if self._pinned is not None:
            self._pinned.shutdown(wait=False)
            self._pinned = None


class Operator(Generic[ConfigT]):
    """A graph node. Subclasses set `Config` and implement `process` (or `process_batch`)."""

    Config: ClassVar[type[BaseModel]] = EmptyConfig
    batching: ClassVar[bool] = False  # True: the runtime hands lists across streams
    # what it takes and hands on, checked by `validate` (engine/kinds.py); None: not declared
    consumes: ClassVar[str | None] = None
    produces: ClassVar[str | None] = None
    # config fields that name model outputs this operator reads (checked by `validate --connect`)
    model_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ConfigT, ctx: OperatorContext) -> None:
        self.config = config
        self.ctx = ctx

    async def setup(self) -> None:
        """Acquire resources (connections, models) before frames flow."""

    async def teardown(self) -> None:
        """Release resources after the last frame."""

    # validate --connect calls probe() alone, without setup/teardown: for operators whose setup
    # starts work a check should not (a publisher thread, a spool file) and whose probe covers it
    probe_replaces_setup: ClassVar[bool] = False

    async def probe(self) -> str | None:
        """For `validate --connect`, after `setup`: reach what this operator needs beyond what setup
        checked (a broker it connects to lazily, ...) and say what it found; raise if unreachable."""
        return None

    async def on_stream_start(self, info: StreamInfo) -> None:
        """Create per-stream state."""

    async def on_stream_reset(self, info: StreamInfo) -> Sequence[Item]:
        """The source reconnected; decoders start over. May emit flushed items."""
        return ()

    async def on_stream_lost(self, stream_id: str, reason: str, at_ns: int) -> None:
        """The source lost its stream, or cannot reach it yet (it may not have started), and
        retries; `reason` says why (scrubbed), `at_ns` when it noticed. A reset or an end follows."""

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        """Release per-stream state; may emit items still held (a decoder's tail)."""
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        """Handle one item; return zero or more items for downstream."""
        raise NotImplementedError

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        """Handle a cross-stream batch (batching operators)."""
        out: list[Item] = []
        for item in items:
            out.extend(await self.process(item))
        return out


Emit = Callable[[Message], Awaitable[None]]


@dataclass
class SourceContext:
    """What the runtime gives a source: its stream id, limits and the stop signal."""

    stream_id: str
    url: str
    metrics: NodeMetrics
    stop: asyncio.Event
    max_frames: int | None = None


class Source(Generic[ConfigT]):
    """Produces one stream's messages (Control START, packets or frames, Control END)."""

    Config: ClassVar[type[BaseModel]] = EmptyConfig
    produces: ClassVar[str | None] = None  # "packets" or "frames" (engine/kinds.py); None: unknown

    def __init__(self, config: ConfigT, ctx: SourceContext) -> None:
        self.config = config
        self.ctx = ctx

    async def run(self, emit: Emit) -> None:
        """Emit the stream until it ends or `ctx.stop` is set; emit Control END last."""
        raise NotImplementedError

    async def probe(self) -> str | None:
        """For `validate --connect`: open the stream once and describe it (codec, size, rate);
        raise SourceError if it cannot be read. None: this source has nothing to reach."""
        return None


_BUILTIN: dict[str, str] = {
    "source.file": "operators.sources:FileSource",
    "source.rtsp": "operators.sources:RtspSource",
    "decode.pyav": "operators.decode:PyAVDecode",
    "preprocess.cpu": "operators.preprocess:CpuPreprocess",
    "postprocess.centerface": "operators.postprocess:CenterFacePostprocess",
    "postprocess.textseg": "operators.postprocess:TextSegPostprocess",
    "infer.triton": "operators.infer:TritonInfer",
    "sink.jsonl": "operators.sinks:JsonlSink",
    "sink.null": "operators.sinks:NullSink",
    "decode.nvdec": "operators.gpu_decode:NvDecode",
    "preprocess.torch": "operators.gpu_preprocess:TorchPreprocess",
    "preprocess.dali": "operators.gpu_preprocess:DaliPreprocess",
    "infer.torch": "operators.infer_torch:TorchInfer",
    "track.bytetrack": "operators.track:ByteTrack",
    "redact": "operators.redact:Redact",
    "sink.file": "operators.video_out:FileSink",
    "sink.rtsp": "operators.video_out:RtspSink",
    "sink.kafka": "operators.kafka_sink:KafkaSink",
    "analytics.zones": "operators.analytics:ZoneAnalytics",
    "source.images": "operators.image_source:ImageSource",
    "monitor.drift": "operators.drift:DriftMonitor",
}
_registered: dict[str, type[Any]] = {}


def register(name: str) -> Callable[[type[Any]], type[Any]]:
    """Register an operator class under a dotted name (plugins, tests)."""

    def wrap(cls: type[Any]) -> type[Any]:
        _registered[name] = cls
        return cls

    return wrap


def known_names() -> list[str]:
    return sorted({*_BUILTIN, *_registered})


def resolve(name: str) -> type[Any]:
    """The class registered as `name`; KeyError if unknown, ImportError if its module fails."""
    if name in _registered:
        return _registered[name]
    target = _BUILTIN[name]
    module_name, class_name = target.split(":")
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    _registered[name] = cls
    return cls
