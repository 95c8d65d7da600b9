"""A shipped testing harness: synthetic sources, slow and collecting operators, one-call runs.

Each operator's test becomes a dozen lines: write a small graph, run it, look at what arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from engine import yamlsource
from engine.frame import Control, ControlKind, Frame, Item, StreamInfo, now_ns
from engine.plan import GraphPlan, build_plan
from engine.registry import Emit, Operator, OperatorContext, Source, register
from engine.runtime import RunOptions, Runtime
from engine.spec import StrictModel


class SyntheticConfig(StrictModel):
    """Options of `test.synthetic`: tiny frames, numbered, at a given rate."""

    frames: int = Field(10, ge=0)
    fps: float = Field(0.0, ge=0, description="0: as fast as the graph takes them.")
    width: int = 8
    height: int = 8


@register("test.synthetic")
class SyntheticSource(Source[SyntheticConfig]):
    """Emits `frames` numbered frames whose pixels hold their sequence number."""

    Config = SyntheticConfig

    async def run(self, emit: Emit) -> None:
        cfg, sid = self.config, self.ctx.stream_id
        await emit(Control(ControlKind.START, sid, StreamInfo(sid, width=cfg.width, height=cfg.height)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for seq in range(cfg.frames):
            if self.ctx.stop.is_set() or (self.ctx.max_frames is not None and seq >= self.ctx.max_frames):
                break
            if cfg.fps:
                await asyncio.sleep(max(0.0, t0 + seq / cfg.fps - loop.time()))
            image = np.full((cfg.height, cfg.width, 3), seq % 256, np.uint8)
            await emit(Frame(sid, seq, seq, now_ns(), image))
        await emit(Control(ControlKind.END, sid))


class SlowConfig(StrictModel):
    delay_ms: float = Field(10.0, ge=0)
    blocking: bool = Field(False, description="Sleep in a thread (blocking work) instead of async.")


@register("test.slow")
class SlowOperator(Operator[SlowConfig]):
    """Takes `delay_ms` per item: a consumer that falls behind."""

    Config = SlowConfig

    async def process(self, item: Item) -> Sequence[Item]:
        if self.config.blocking:
            import time

            await self.ctx.run_blocking(time.sleep, self.config.delay_ms / 1000)
        else:
            await asyncio.sleep(self.config.delay_ms / 1000)
        return (item,)


class CollectConfig(StrictModel):
    delay_ms: float = Field(0.0, ge=0)


@register("test.collect")
class CollectOperator(Operator[CollectConfig]):
    """Records every item, batch and lifecycle call it sees, then passes items on."""

    Config = CollectConfig
    batching = True

    def __init__(self, config: CollectConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.items: list[Item] = []
        self.arrived_ns: list[int] = []  # when each item arrived here, aligned with `items`
        self.batches: list[list[Item]] = []
        self.calls: list[tuple[str, str]] = []

    async def on_stream_start(self, info: StreamInfo) -> None:
        self.calls.append(("start", info.stream_id))

    async def on_stream_end(self, stream_id: str) -> Sequence[Item]:
        self.calls.append(("end", stream_id))
        return ()

    async def teardown(self) -> None:
        self.calls.append(("teardown", ""))

    async def process_batch(self, items: list[Item]) -> Sequence[Item]:
        if self.config.delay_ms:
            await asyncio.sleep(self.config.delay_ms / 1000)
        self.batches.append(list(items))
        self.items.extend(items)
        self.arrived_ns.extend([now_ns()] * len(items))
        return items


def plan_from_yaml(text: str, name: str = "<test>") -> GraphPlan:
    """Validate a graph written inline in a test."""
    return build_plan(yamlsource.load_text(text, name))


async def run_graph(text: str, **options: Any) -> tuple[Runtime, dict[str, Any]]:
    """Run an inline graph to completion; return the runtime (operators, metrics) and summary."""
    runtime = Runtime(plan_from_yaml(text), RunOptions(**options))
    summary = await runtime.run()
    return runtime, summary


async def collect_frames(text: str, **options: Any) -> tuple[dict[str, list[Frame]], dict[str, Any]]:
    """Run an inline graph whose collecting node is `out`: its frames by stream, and the summary."""
    runtime, summary = await run_graph(text, **options)
    out: Any = runtime.operator("out")
    by_stream: dict[str, list[Frame]] = {}
    for item in out.items:
        assert isinstance(item, Frame)
        by_stream.setdefault(item.stream_id, []).append(item)
    return by_stream, summary
