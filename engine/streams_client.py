"""`framegraph streams ls|add|rm`: a small client of a worker's control API."""

from __future__ import annotations

import argparse
import json
import sys

import httpx


def streams_command(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.api, headers=headers, timeout=10) as client:
        if args.action == "ls":
            response = client.get("/streams")
        elif args.action == "add":
            if not args.stream_id or not args.url:
                print("streams add needs STREAM_ID and --url", file=sys.stderr)
                return 2
            body = {"id": args.stream_id, "url": args.url, "config": json.loads(args.config)}
            if args.op:
                body["op"] = args.op
            response = client.post("/streams", json=body)
        else:
            if not args.stream_id:
                print("streams rm needs STREAM_ID", file=sys.stderr)
                return 2
            response = client.delete(f"/streams/{args.stream_id}")
    if response.status_code >= 400:
        print(f"{response.status_code}: {response.text}", file=sys.stderr)
        return 1
    if response.content:
        print(json.dumps(response.json(), indent=2))
    return 0
