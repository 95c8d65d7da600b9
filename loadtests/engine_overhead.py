"""What the runtime costs per frame per node, against bare asyncio queues, in one run.

    python loadtests/engine_overhead.py [--streams 8] [--frames 2000] [--nodes 5] [--rounds 3]

S synthetic sources emit tiny frames as fast as the graph takes them through a chain of K
pass-through nodes into sink.null: what is left is the engine's own work per hop (bounded edge
queues with policies, per-stream order, metrics, timing). The baseline beside it moves the same
frames through K+1 plain bounded asyncio.Queues with one task per stage. Prints µs per hop for
both and their throughput ratio (engine / bare). At 64 streams x 30 fps through 7 nodes a
process needs ~13,400 hops/s; this says how much of a core that takes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.cli import run_async  # noqa: E402
from engine.frame import Frame, now_ns  # noqa: E402
from engine.runtime import RunOptions, Runtime  # noqa: E402
from engine.testing import plan_from_yaml  # noqa: E402


def graph(streams: int, frames: int, nodes: int) -> str:
    sources = "\n".join(
        f"  - {{id: s{i}, url: 'synthetic:', op: test.synthetic, config: {{frames: {frames}}}}}"
        for i in range(streams)
    )
    chain, prev = [], "sources"
    for k in range(nodes):
        chain.append(f"  - {{id: n{k}, op: test.slow, inputs: [{prev}], config: {{delay_ms: 0}}}}")
        prev = f"n{k}"
    chain.append(f"  - {{id: out, op: sink.null, inputs: [{prev}]}}")
    return "name: overhead\nsources:\n" + sources + "\nnodes:\n" + "\n".join(chain) + "\n"


def engine_run(streams: int, frames: int, nodes: int) -> float:
    """Seconds per hop through the engine."""
    plan = plan_from_yaml(graph(streams, frames, nodes))
    started = time.perf_counter()
    summary = run_async(Runtime(plan, RunOptions()).run())
    elapsed = time.perf_counter() - started
    assert summary["frames_out"] == streams * frames, summary["frames_out"]
    return elapsed / (streams * frames * (nodes + 1))


async def bare(streams: int, frames: int, nodes: int) -> float:
    """Seconds per hop through plain asyncio queues (size 32 each) and one task per stage."""
    queues: list[asyncio.Queue[Frame | None]] = [asyncio.Queue(32) for _ in range(nodes + 1)]
    done = 0

    async def source(sid: str) -> None:
        for seq in range(frames):
            image = np.full((8, 8, 3), seq % 256, np.uint8)
            await queues[0].put(Frame(sid, seq, seq, now_ns(), image))

    async def stage(k: int) -> None:
        nonlocal done
        while (item := await queues[k].get()) is not None:
            if k + 1 < len(queues):
                await asyncio.sleep(0)  # the pass-through node's await
                await queues[k + 1].put(item)
            else:
                done += 1

    started = time.perf_counter()
    stages = [asyncio.create_task(stage(k)) for k in range(nodes + 1)]
    await asyncio.gather(*(source(f"s{i}") for i in range(streams)))
    for k in range(nodes + 1):
        await queues[k].put(None)
        await stages[k]
    elapsed = time.perf_counter() - started
    assert done == streams * frames
    return elapsed / (streams * frames * (nodes + 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    eng, base = [], []
    for _ in range(args.rounds):
        eng.append(engine_run(args.streams, args.frames, args.nodes) * 1e6)
        base.append(run_async(bare(args.streams, args.frames, args.nodes)) * 1e6)
        print(json.dumps({"engine_us_per_hop": round(eng[-1], 2), "bare_us_per_hop": round(base[-1], 2)}))
    e, b = statistics.median(eng), statistics.median(base)
    result = {
        "streams": args.streams,
        "frames": args.frames,
        "nodes": args.nodes + 1,
        "engine_us_per_hop": round(e, 2),
        "bare_us_per_hop": round(b, 2),
        "engine_hops_per_s": round(1e6 / e),
        "ratio_engine_to_bare_throughput": round(b / e, 3),
    }
    print(
        f"engine {e:.1f} µs/hop ({1e6 / e:,.0f} hops/s) vs bare asyncio queues {b:.1f} µs/hop: "
        f"throughput ratio {b / e:.3f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
