"""OpenTelemetry tracing of frames: one trace per frame, from capture to the last operator."""

from __future__ import annotations

from typing import Any


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
