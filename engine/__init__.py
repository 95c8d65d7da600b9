"""framegraph engine: graph spec, validation, async runtime, metrics and CLI."""

__version__ = "0.1.0"
