"""`framegraph worker`: a Worker and its control API served together on one event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import uvicorn

from engine.api import create_app
from engine.plan import GraphPlan
from engine.runtime import RunOptions
from engine.store import MemoryStore, RedisStore, StreamStore
from engine.worker import Worker

log = logging.getLogger("framegraph.serve")


def read_token(path: str | None) -> str | None:
    """The API token from a file (stripped); None means no auth (local use only)."""
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise SystemExit(f"the token file {path} is empty")
    return token


def serve_worker(plan: GraphPlan, args: argparse.Namespace) -> int:
    from engine.cli import run_async

    token = read_token(args.token_file)
    if token is None and args.api_address not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("refusing to serve the control API beyond localhost without --token-file")
    store: StreamStore = RedisStore(args.redis, args.namespace) if args.redis else MemoryStore()
    worker = Worker(plan, RunOptions(output_dir=args.output), store, args.worker_id, args.lease_ttl_s)
    app = create_app(worker, token, args.protect_reads)
    config = uvicorn.Config(
        app, host=args.api_address, port=args.api_port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        api = asyncio.create_task(server.serve())
        log.info("worker %s: API on http://%s:%d", args.worker_id, args.api_address, args.api_port)
        try:
            await worker.run()
        finally:
            server.should_exit = True
            await api

    run_async(go())
    return 0
