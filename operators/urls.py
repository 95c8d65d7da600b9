"""URL helpers: secrets in URLs never reach a log, an event, an error or a trace."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL with any password (and user name) replaced: rtsp://***@host/path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if not parts.netloc or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"]+@")


def scrub(text: str) -> str:
    """Any text (an FFmpeg error, a log line) with URL credentials replaced by ***."""
    return _CREDENTIALS.sub(r"\1***@", text)
