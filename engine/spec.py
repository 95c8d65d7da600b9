"""The graph file's schema: typed, documented, unknown keys rejected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
QueuePolicy = Literal["block", "drop_oldest", "drop_newest", "latency"]
RTSP_SCHEMES = ("rtsp", "rtsps")
# what source.file reads through FFmpeg besides paths (a `scheme://` not here is a typo, not a file)
FILE_SCHEMES = ("file", "http", "https", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp", "ftp")


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueSpec(StrictModel):
    """A bounded queue on an edge and what happens when its consumer falls behind."""

    size: int = Field(8, ge=1, le=100_000, description="Items the edge holds before its policy acts.")
    policy: QueuePolicy = Field(
        "block",
        description=(
            "block: the producer waits (lossless, upstream slows down); drop_oldest: live "
            "video, keep the freshest; drop_newest: keep what is queued; latency: drop a frame "
            "older than budget_ms when it is taken, and the oldest when full."
        ),
    )
    budget_ms: float | None = Field(
        None, gt=0, description="With policy latency: the age (since capture) a frame may reach."
    )

    @model_validator(mode="after")
    def _budget_matches_policy(self) -> QueueSpec:
        if self.policy == "latency" and self.budget_ms is None:
            raise ValueError("policy 'latency' needs budget_ms")
        if self.policy != "latency" and self.budget_ms is not None:
            raise ValueError("budget_ms applies only to policy 'latency'")
        return self


class EdgeSpec(StrictModel):
    """An input edge with its own queue, when a node's default queue does not fit."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", description="Id of the upstream node, source, or 'sources'.")
    queue: QueueSpec | None = None


class BatchSpec(StrictModel):
    """Cross-stream batching for operators that gain from it (preprocess, inference)."""

    max_batch: int = Field(8, ge=1, le=1024, description="Largest batch handed to the operator.")
    max_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest wait for a batch to fill after its first item."
    )


class SourceSpec(StrictModel):
    """One stream: a camera or a file. Its id is the stream id in events and metrics."""

    id: str = Field(pattern=ID_PATTERN, description="Stream id, unique in the graph.")
    url: str = Field(min_length=1, description="rtsp://..., a file path, or any URL FFmpeg reads.")
    op: str | None = Field(None, description="Source operator; by default from the URL scheme.")
    config: dict[str, Any] = Field(default_factory=dict, description="The source operator's config.")

    @property
    def resolved_op(self) -> str:
        """The operator that reads this source."""
        return self.op or op_for_url(self.url)


def url_scheme(url: str) -> str:
    """The lowercased `scheme` of `scheme://...`; '' for a path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def op_for_url(url: str) -> str:
    """The source operator a URL picks when a source names none."""
    return "source.rtsp" if url_scheme(url) in RTSP_SCHEMES else "source.file"


def unknown_scheme(url: str) -> str | None:
    """Why a source URL's scheme cannot be read (None: a path or a known scheme)."""
    scheme = url_scheme(url)
    if not scheme or scheme in RTSP_SCHEMES or scheme in FILE_SCHEMES:
        return None
    known = ", ".join(f"{s}://" for s in (*RTSP_SCHEMES, *FILE_SCHEMES))
    return f"unknown URL scheme {scheme + '://'!r}: give a file path or a URL of {known}"


def unencoded_credentials(url: str) -> str | None:
    """Why FFmpeg cannot read a URL's `user:password@` (an unencoded `/`, `?`, `#` or a second `@`
    in it; it would fail on every reconnect); None when fine. Never shows the password."""
    if not url_scheme(url) or "://" not in url:
        return None
    rest = url.split("://", 1)[1]
    head = rest[: rest.rfind("@")] if "@" in rest else ""
    colon = head.find(":")
    if colon < 0:  # no credentials, or a user name alone
        return None
    cut = min((head.find(c) for c in "/?#" if c in head), default=len(head))
    if cut < colon or (cut < len(head) and head[colon + 1 : cut].isdigit()):
        return None  # host[:port]/path...@...: the `@` is in the path or query, not credentials
    if not any(c in head for c in "/?#@"):
        return None
    return (
        "the user:password part holds an unencoded '/', '?', '#' or '@', which ends it early: "
        "no camera can be reached this way; percent-encode them in the password (%2F, %3F, %23, %40)"
    )


class NodeSpec(StrictModel):
    """One operator in the graph and the edges that feed it."""

    id: str = Field(pattern=ID_PATTERN, description="Node id, unique in the graph.")
    op: str = Field(description="Registered operator name, e.g. decode.pyav.")
    inputs: list[str | EdgeSpec] = Field(
        min_length=1, description="Upstream ids ('sources' means every source), or edges."
    )
    queue: QueueSpec = Field(default_factory=QueueSpec, description="Default queue of each input.")
    batch: BatchSpec | None = Field(None, description="Cross-stream batching (batching ops only).")
    workers: int = Field(
        1, ge=1, le=256, description="Parallel lanes; a stream always uses the same lane (order kept)."
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The operator's own config.")

    def edges(self) -> list[tuple[str, QueueSpec]]:
        """(upstream id, queue) for each input."""
        out: list[tuple[str, QueueSpec]] = []
        for item in self.inputs:
            if isinstance(item, str):
                out.append((item, self.queue))
            else:
                out.append((item.from_, item.queue or self.queue))
        return out


class TracingSpec(StrictModel):
    """OpenTelemetry tracing: one trace per frame, a span per operator it passed."""

    exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="none: stage timings are still measured, no spans are made."
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of frames traced (per trace id).")
    otlp_endpoint: str = Field(
        "http://127.0.0.1:4317", description="OTLP gRPC collector, with exporter otlp."
    )


class GraphSpec(StrictModel):
    """A whole pipeline: its streams and the DAG of operators they flow through."""

    version: Literal[1] = Field(1, description="Graph file format version.")
    name: str = Field(min_length=1, description="Shown in logs, metrics and events.")
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: GPU operators where CUDA and their packages exist."
    )
    sources: list[SourceSpec] = Field(min_length=1)
    nodes: list[NodeSpec] = Field(min_length=1)
    tracing: TracingSpec = Field(default_factory=TracingSpec)


def template_problem(template: str, known: tuple[str, ...]) -> str | None:
    """Why `template` (str.format placeholders, e.g. "{stream}.mp4") cannot be filled from the
    fields `known`; None when it can. A config validator raises it, so `validate` says it."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"{template!r} is not a valid template ({e}); write a literal brace as {{{{ or }}}}"
    for name in fields:
        base = name.split(".")[0].split("[")[0]
        if base not in known:
            allowed = ", ".join("{" + k + "}" for k in known) or "none"
            return f"unknown placeholder {{{name}}} in {template!r}: it knows {allowed}"
    return None
