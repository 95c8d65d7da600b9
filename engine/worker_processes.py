"""`framegraph worker --processes K`: K workers in one container, sharing streams through Redis.

One worker process tops out where its per-frame Python work (demuxing, postprocess, tracking,
events) fills one core, whatever else the box has (see engine/shards.py). K processes on one
box (one pod, one GPU) share the streams the way K pods would: each is a worker of its own, id
`<worker-id>-<i>`, with its control API and /metrics on `api-port + i`, leasing streams from
the same registry. The parent only starts them (spawned: CUDA-safe), forwards SIGINT/SIGTERM,
and if one exits on its own, stops the others and exits 1: a supervisor (Kubernetes) restarts
the set, and the dead process's leases expire and are taken over meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from typing import Any

log = logging.getLogger("framegraph.workers")


def _child(options: dict[str, Any], index: int) -> None:
    """One worker process: the parent's options, its own id and API port."""
    from engine.plan import load_plan
    from engine.plugins import load_plugins
    from engine.serve import serve_worker

    args = argparse.Namespace(**options)
    args.worker_id = f"{options['worker_id']}-{index}"
    args.api_port = options["api_port"] + index
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker{index} %(name)s: %(message)s",
    )
    load_plugins(args.plugin)
    sys.exit(serve_worker(load_plan(args.graph, args.overrides), args))


def serve_workers(args: argparse.Namespace, processes: int) -> int:
    """Run `processes` workers until SIGINT/SIGTERM (exit 0) or until one dies (exit 1)."""
    if not args.redis:
        raise SystemExit(
            "--processes needs --redis (or FG_REDIS_URL): the processes share their streams through it"
        )
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_child, args=(vars(args), i), name=f"framegraph-worker{i}")
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    log.info(
        "%d worker processes %s-0..%d, APIs on ports %d..%d",
        processes,
        args.worker_id,
        processes - 1,
        args.api_port,
        args.api_port + processes - 1,
    )
    stopping = False

    def stop_all(_signum: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        while any(p.is_alive() for p in procs):
            for i, proc in enumerate(procs):
                if not stopping and not proc.is_alive():
                    log.error(
                        "worker process %d (%s-%d) exited with code %s; stopping the others",
                        i,
                        args.worker_id,
                        i,
                        proc.exitcode,
                    )
                    failed = True
                    stop_all()
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for proc in procs:
            proc.join()
    return 1 if failed or any(p.exitcode not in (0, None) for p in procs) else 0
