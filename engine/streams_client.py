"""`framegraph streams ls|add|update|rm`: a small client of a worker's control API.

Exit status: 0 done, 1 the API could not be reached or refused the request, 2 a usage error
(missing STREAM_ID or --url, --config that is not a JSON object, --api that is not an http(s) URL).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

EXIT_UNREACHABLE = 1  # no answer, or an error status from the API
EXIT_USAGE = 2


def _usage(message: str) -> int:
    print(f"framegraph streams: {message}", file=sys.stderr)
    return EXIT_USAGE


def _body(args: argparse.Namespace) -> dict[str, Any] | str:
    """The POST /streams body, or why the arguments cannot make one."""
    if not args.stream_id or not args.url:
        return f"streams {args.action} needs STREAM_ID and --url"
    try:
        config = json.loads(args.config)
    except json.JSONDecodeError as e:
        return f"--config is not valid JSON ({e.msg} at column {e.colno}): {args.config}"
    if not isinstance(config, dict):
        return f"--config must be a JSON object ({{...}}), got: {args.config}"
    body: dict[str, Any] = {"id": args.stream_id, "url": args.url, "config": config}
    if args.op:
        body["op"] = args.op
    return body


def streams_command(args: argparse.Namespace) -> int:
    """Run `streams ls|add|rm` against the API at `args.api`; print the answer (`ls`: a table,
    or JSON with --json; add: the stream as JSON; rm: a line)."""
    if not args.api.startswith(("http://", "https://")):
        return _usage(f"--api must be an http:// or https:// URL, got {args.api!r}")
    body: dict[str, Any] | str | None = None
    if args.action in ("add", "update"):
        body = _body(args)
        if isinstance(body, str):
            return _usage(body)
    elif args.action == "rm" and not args.stream_id:
        return _usage("streams rm needs STREAM_ID")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        with httpx.Client(base_url=args.api, headers=headers, timeout=10) as client:
            if args.action == "ls":
                response = client.get("/streams")
            elif args.action == "add":
                response = client.post("/streams", json=body)
            elif args.action == "update":  # a new spec: the stream restarts with it (a failed one at once)
                response = client.put(f"/streams/{args.stream_id}", json=body)
            else:
                response = client.delete(f"/streams/{args.stream_id}")
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        reason = str(e) or type(e).__name__
        print(f"framegraph streams: cannot reach the API at {args.api}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if response.status_code >= 400:
        print(
            f"framegraph streams {args.action}: {response.status_code}: {_refusal(response)}", file=sys.stderr
        )
        return EXIT_UNREACHABLE
    if response.content:
        try:
            answer = response.json()
        except ValueError:
            print(response.text)
            return 0
        if args.action == "ls" and not args.json and isinstance(answer, list):
            print(streams_table(answer))
        else:
            print(json.dumps(answer, indent=2))
    elif args.action == "rm":
        print(f"removed {args.stream_id}")
    return 0


def _refusal(response: httpx.Response) -> str:
    """Why the API refused, in words: FastAPI's `detail` (a text, or field errors) or the body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text
    if isinstance(detail, list):
        parts = []
        for d in detail:
            where = ".".join(str(x) for x in d.get("loc", []) if x != "body")
            parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
        return "; ".join(parts)
    return str(detail) if detail is not None else response.text


_COLUMNS = (  # header, key, width-limited
    ("ID", "id"),
    ("STATE", "state"),
    ("OWNER", "owner"),
    ("FPS", "fps"),
    ("P95 MS", "latency_p95_ms"),
    ("IN", "frames_in"),
    ("OUT", "frames_out"),
    ("DROPPED", "dropped"),
    ("RECONNECTS", "reconnects"),
    ("URL", "url"),
)


def streams_table(streams: list[dict[str, Any]]) -> str:
    """GET /streams as a table, one stream a row; an `error` goes on its own line under its row."""
    if not streams:
        return "no streams"

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:g}" if isinstance(value, float) else str(value)

    rows = [[cell(s.get(key)) for _, key in _COLUMNS] for s in streams]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(_COLUMNS)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    for s, row in zip(streams, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if s.get("error"):
            retry = f" (tried again in {s['retry_in_s']:g} s)" if s.get("retry_in_s") is not None else ""
            lines.append(f"  error: {s['error']}{retry}")
    return "\n".join(lines)
