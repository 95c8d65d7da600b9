"""OpenTelemetry tracing of frames: one trace per frame, from capture to the last operator.

The root span of a frame starts at its capture time and ends when the graph's primary sink
has handled it; each operator adds a child span that starts when the frame entered the
operator's queue, with `queue_wait_ms` and `work_ms` attributes. Operators that finish work
later (a Kafka delivery ack) add their own child span with `ctx.tracer.child(...)`.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from engine.spec import TracingSpec


class FrameTracer:
    """Makes the spans of frames for one run; a provider of its own, not the global one."""

    def __init__(self, spec: TracingSpec, graph: str, exporter: SpanExporter | None = None) -> None:
        sampler = ParentBased(TraceIdRatioBased(spec.sample_ratio))
        resource = Resource.create({"service.name": "framegraph", "framegraph.graph": graph})
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        if exporter is not None:  # tests: spans handed over at once
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif spec.exporter == "console":
            self.provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif spec.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=spec.otlp_endpoint))
            )
        self.tracer = self.provider.get_tracer("framegraph")

    def start(self, item: Any, source_id: str) -> None:
        """Open the root span of a frame (or packet) at its capture time."""
        item.trace = self.tracer.start_span(
            "frame",
            start_time=item.capture_ns,
            attributes={
                "framegraph.stream_id": item.stream_id,
                "framegraph.seq": item.seq,
                "framegraph.source": source_id,
            },
        )

    def stage(self, item: Any, node_id: str, enqueued_ns: int, started_ns: int, ended_ns: int) -> None:
        """A child span for one operator's handling of the item."""
        span = item.trace
        if span is None or not span.is_recording():
            return
        self.child(
            span,
            node_id,
            enqueued_ns,
            ended_ns,
            {
                "framegraph.queue_wait_ms": (started_ns - enqueued_ns) / 1e6,
                "framegraph.work_ms": (ended_ns - started_ns) / 1e6,
            },
        )

    def child(self, parent: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
        """Record a finished child span of `parent` (a frame's root span), e.g. a delivery ack."""
        if parent is None or not parent.get_span_context().trace_flags.sampled:
            return  # an ended root is fine: a late child (a delivery ack) joins its trace
        ctx = trace.set_span_in_context(parent)
        span = self.tracer.start_span(name, context=ctx, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)

    def finish(self, item: Any, ended_ns: int) -> None:
        """Close the root span: the frame has been handled by the graph's primary sink."""
        span = item.trace
        if span is not None and span.is_recording():
            span.set_attribute("framegraph.latency_ms", (ended_ns - item.capture_ns) / 1e6)
            span.end(end_time=ended_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()


def traceparent(frame_or_span: Any) -> str | None:
    """The W3C `traceparent` of a frame's trace (for Kafka headers), or None when untraced."""
    span = getattr(frame_or_span, "trace", frame_or_span)
    if span is None or not hasattr(span, "get_span_context"):
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id(frame_or_span: Any) -> str | None:
    """The 32-hex-digit trace id of a frame's trace, or None when untraced."""
    parent = traceparent(frame_or_span)
    return parent.split("-")[1] if parent else None
