"""`framegraph worker`: a Worker and its control API served together on one event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from engine.api import create_app
from engine.errors import FramegraphError
from engine.plan import GraphPlan
from engine.runtime import RunOptions
from engine.store import MemoryStore, RedisStore, StreamStore
from engine.worker import Worker
from operators.urls import scrub

log = logging.getLogger("framegraph.serve")


def read_token(path: str | None) -> str | None:
    """The API token from a file (stripped); None means no auth (local use only)."""
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise SystemExit(f"the token file {path} is empty")
    return token


def bind_api(address: str, port: int) -> socket.socket:
    """A listening socket for the control API; FramegraphError naming address and port if it is
    taken (or not allowed), so that the worker says so in one line before it starts anything."""
    from engine.prometheus import bind_reason

    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise FramegraphError(f"--api-port {port}: cannot serve on {address}:{port}: {bind_reason(e)}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise FramegraphError(f"--api-port {port}: cannot serve on {address}:{port}: {bind_reason(e)}") from e
    sock.setblocking(False)
    return sock


def serve_worker(plan: GraphPlan, args: argparse.Namespace) -> int:
    """`framegraph worker` (one process): exit status 0 when stopped, 1 if the API port cannot be bound."""
    from engine.cli import EXIT_FAILED, run_async

    token = read_token(args.token_file)
    if token is None and args.api_address not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("refusing to serve the control API beyond localhost without --token-file")
    try:
        sock = bind_api(args.api_address, args.api_port)
    except FramegraphError as e:
        print(f"worker {args.worker_id}: {scrub(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    store: StreamStore = RedisStore(args.redis, args.namespace) if args.redis else MemoryStore()
    worker = Worker(
        plan, RunOptions(output_dir=args.output), store, args.worker_id, args.lease_ttl_s, args.failed_retry_s
    )
    app = create_app(worker, token, args.protect_reads)
    config = uvicorn.Config(
        app, host=args.api_address, port=args.api_port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        api = asyncio.create_task(server.serve(sockets=[sock]))
        log.info("worker %s: API on http://%s:%d", args.worker_id, args.api_address, args.api_port)
        try:
            await worker.run()
        finally:
            server.should_exit = True
            await api

    try:
        run_async(go())
    finally:
        sock.close()
    return 0
