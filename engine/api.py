"""The control API of a worker (FastAPI, OpenAPI at /docs): streams, health, metrics.

Mutations need the bearer token (compared in constant time); reads too when configured.
Stream URLs are always returned with their credentials masked.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry
from pydantic import BaseModel, Field

from engine.errors import GraphConfigError
from engine.plan import source_plan
from engine.prometheus import MetricsCollector
from engine.spec import ID_PATTERN
from engine.worker import Worker
from operators.urls import redact_url, scrub

HTTP_422 = 422  # "Unprocessable Content": a body that parses but is not a valid stream


class StreamBody(BaseModel):
    """A stream to run: the same fields as an entry of a graph's `sources`."""

    model_config = {"extra": "forbid"}

    id: str | None = Field(None, pattern=ID_PATTERN, description="Stream id (required on POST).")
    url: str = Field(min_length=1, description="rtsp://..., a file path, or any URL FFmpeg reads.")
    op: str | None = Field(None, description="Source operator; by default from the URL scheme.")
    config: dict[str, Any] = Field(default_factory=dict, description="The source operator's config.")


class StreamStatus(BaseModel):
    """A stream as GET /streams shows it; `error` says why it failed or is reconnecting."""

    id: str
    url: str
    op: str | None
    owner: str | None
    state: str
    frames_in: int = 0
    frames_out: int = 0
    fps: float = 0.0
    latency_p95_ms: float | None = None
    dropped: int = 0
    reconnects: int = 0
    error: str | None = None
    retry_in_s: float | None = Field(None, description="A failed stream: when a worker tries it again.")


def create_app(worker: Worker, token: str | None, protect_reads: bool = False) -> FastAPI:
    """The API of one worker; `token` None disables auth (a local, single-user worker)."""
    app = FastAPI(title="framegraph control API", version="1")
    bearer = HTTPBearer(auto_error=False)

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        if creds is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "bearer token required", headers={"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong token")

    read_auth = [Depends(authorized)] if protect_reads else []

    async def status_of(sid: str, spec: dict[str, Any], view: _View) -> StreamStatus:
        """A stream as the registry knows it, from any worker's API: live figures where this worker
        runs it, the status its worker published where another one does, `failed` (with why and
        when it is tried again) while it is held back, `starting` once claimed, else `pending`."""
        owner = view.owners.get(sid)
        out = StreamStatus(
            id=sid, url=redact_url(spec.get("url", "")), op=spec.get("op"), owner=owner, state="pending"
        )
        if sid in worker.owned:
            out = out.model_copy(update=worker.stream_status(sid))
        elif sid in view.failed:
            held = view.failed[sid]
            out.state, out.error = "failed", held.get("error") or "failed"
            out.retry_in_s = max(0.0, round(float(held.get("retry_at", 0)) - time.time(), 1))
        elif owner is not None and view.statuses.get(sid, {}).get("owner") == owner:
            out = out.model_copy(update=view.statuses[sid])
        elif owner is not None:
            out.state = "starting"
        if out.error is not None:
            out.error = scrub(out.error)
        return out

    async def view() -> _View:
        store = worker.store
        return _View(await store.owners(), await store.statuses(), await store.failed())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, Any]:
        ready = worker.ready and worker.store_ok
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"ready": ready, "registry": "ok" if worker.store_ok else "unreachable"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        registry = CollectorRegistry()
        name = worker.runtime.plan.spec.name
        registry.register(MetricsCollector(worker.runtime.metrics, name, worker.held_failed))
        registry.register(_ActiveStreams(worker))
        return generate_latest(registry).decode()

    @app.get("/streams", dependencies=read_auth)
    async def list_streams() -> list[StreamStatus]:
        desired, seen = await worker.store.desired(), await view()
        return [await status_of(sid, spec, seen) for sid, spec in sorted(desired.items())]

    @app.get("/streams/{stream_id}", dependencies=read_auth)
    async def get_stream(stream_id: str) -> StreamStatus:
        desired = await worker.store.desired()
        if stream_id not in desired:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stream {stream_id!r}")
        return await status_of(stream_id, desired[stream_id], await view())

    def checked(body: StreamBody, stream_id: str) -> dict[str, Any]:
        spec = body.model_dump(exclude_none=True) | {"id": stream_id}
        try:
            source_plan(spec, origin="body")
        except GraphConfigError as e:
            detail = [
                {"loc": ["body", *i.field.split(".")], "msg": i.reason, "type": "value_error"}
                for i in e.issues
            ]
            raise HTTPException(HTTP_422, detail) from e
        return spec

    @app.post("/streams", status_code=status.HTTP_201_CREATED, dependencies=[Depends(authorized)])
    async def add_stream(body: StreamBody) -> StreamStatus:
        if body.id is None:
            raise HTTPException(
                HTTP_422,
                [{"loc": ["body", "id"], "msg": "field required", "type": "missing"}],
            )
        spec = checked(body, body.id)
        if body.id in await worker.store.desired():
            raise HTTPException(status.HTTP_409_CONFLICT, f"stream {body.id!r} exists; PUT updates it")
        await worker.store.put(spec)
        return await status_of(body.id, spec, _View({}, {}, {}))

    @app.put("/streams/{stream_id}", dependencies=[Depends(authorized)])
    async def update_stream(stream_id: str, body: StreamBody) -> StreamStatus:
        if body.id not in (None, stream_id):
            raise HTTPException(
                HTTP_422,
                [{"loc": ["body", "id"], "msg": "differs from the path", "type": "value_error"}],
            )
        spec = checked(body, stream_id)
        await worker.store.put(spec)
        return await status_of(stream_id, spec, await view())

    @app.delete(
        "/streams/{stream_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Depends(authorized)]
    )
    async def remove_stream(stream_id: str) -> Response:
        if not await worker.store.remove(stream_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no stream {stream_id!r}")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse(f"internal error: {type(exc).__name__}", status_code=500)

    return app


@dataclass
class _View:
    """What the registry says of every stream beyond its spec: owners, published statuses, failed."""

    owners: dict[str, str]
    statuses: dict[str, dict[str, Any]]
    failed: dict[str, dict[str, Any]]


class _ActiveStreams:
    """framegraph_streams_active: streams this worker runs (for autoscaling)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> list[GaugeMetricFamily]:
        g = GaugeMetricFamily("framegraph_streams_active", "Streams this worker runs", labels=["worker"])
        g.add_metric([self.worker.worker_id], len(self.worker.owned))
        return [g]
