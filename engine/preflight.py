"""`framegraph validate --connect`: every source opened once, every operator set up and probed.

Static validation lists every problem of the graph file at once; this does the same for the
world outside it. Each camera or file is opened and described (codec, size, rate); each
operator is set up (servers reached, models checked against the graph) and probed (brokers
reached with its own credentials), then torn down. No frame flows. A failure names the
source or node and says why, with credentials masked; the next check runs regardless.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from engine.errors import FramegraphError
from engine.plan import GraphPlan
from engine.runtime import RunOptions, Runtime
from operators.urls import redact_url, scrub


@dataclass
class Check:
    """One source or node checked: what it is, whether it worked, what was found or why not."""

    kind: Literal["source", "node"]
    id: str
    op: str
    ok: bool
    detail: str
    seconds: float
    url: str = ""  # sources: the URL with credentials masked

    def line(self) -> str:
        what = f"{self.kind} {self.id} ({self.op}{', ' + self.url if self.url else ''})"
        return f"  {'ok    ' if self.ok else 'FAILED'} {what}: {self.detail} [{self.seconds:.1f} s]"


def _reason(e: BaseException, timeout_s: float) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    text = str(e) if isinstance(e, FramegraphError) else f"{type(e).__name__}: {e}"
    return scrub(text) or type(e).__name__


async def _check_source(sid: str, op: str, source: Any, url: str, timeout_s: float) -> Check:
    started = time.monotonic()
    try:
        found = await asyncio.wait_for(source.probe(), timeout_s)
        ok, detail = True, found or "nothing to reach (not probed)"
    except Exception as e:
        ok, detail = False, _reason(e, timeout_s)
    return Check("source", sid, op, ok, detail, time.monotonic() - started, redact_url(url))


async def _check_node(nid: str, op: str, operator: Any, timeout_s: float) -> Check:
    started = time.monotonic()
    set_up = False
    try:
        if not operator.probe_replaces_setup:
            await asyncio.wait_for(operator.setup(), timeout_s)
            set_up = True
        found = await asyncio.wait_for(operator.probe(), timeout_s)
        ok, detail = True, found or "set up"
    except Exception as e:
        ok, detail = False, _reason(e, timeout_s)
    finally:
        if set_up:
            try:
                await asyncio.wait_for(operator.teardown(), timeout_s)
            except Exception as e:  # a teardown that fails is worth knowing, not worth hiding the rest
                ok, detail = False, f"{detail}; teardown failed: {_reason(e, timeout_s)}"
        operator.ctx.close()
    return Check("node", nid, op, ok, detail, time.monotonic() - started)


async def preflight(plan: GraphPlan, timeout_s: float = 60.0, parallel_sources: int = 16) -> list[Check]:
    """Sources first (up to `parallel_sources` at a time), then the nodes in graph order."""
    nodes, sources = Runtime(plan, RunOptions()).instances()
    urls = {sp.spec.id: sp.spec.url for sp in plan.sources}
    gate = asyncio.Semaphore(parallel_sources)
    # as many threads as probes at once: a probe's clock never runs while it queues for a thread
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(parallel_sources + 4))

    async def one(sid: str, op: str, source: Any) -> Check:
        async with gate:
            return await _check_source(sid, op, source, urls[sid], timeout_s)

    checks = list(await asyncio.gather(*(one(sid, op, src) for sid, op, src in sources)))
    for nid, op, operator in nodes:
        checks.append(await _check_node(nid, op, operator, timeout_s))
    return checks
