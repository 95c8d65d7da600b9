"""The error tree: every failure a user can meet has a precise class."""

from __future__ import annotations

from dataclasses import dataclass


class FramegraphError(Exception):
    """Root of all framegraph errors."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a graph file: where it is and why it is wrong."""

    origin: str  # "graphs/x.yaml:12" or "--set sources.0.url"
    field: str  # dotted path, the same syntax `--set` accepts
    reason: str

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.reason}"


class GraphConfigError(FramegraphError):
    """A graph file is invalid; carries every issue found, each with file, line and field."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class OperatorError(FramegraphError):
    """An operator failed to set up or to process an item."""


class SourceError(FramegraphError):
    """A source (file, camera) cannot be opened or read."""


class InferenceUnavailable(FramegraphError):
    """The model server cannot serve a request now (down, timing out, model not ready)."""
