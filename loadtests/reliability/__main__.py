"""python -m loadtests.reliability throughput|soak|chaos [--short] [--out DIR] [...]

Exits 1 when a check fails (events lost, a face in the written video, a stream that did not
recover, RSS growth beyond its bound); the report is written either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtests.reliability.options import MODES, Options
from loadtests.reliability.runner import run


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse(argv: list[str]) -> Options:
    ap = argparse.ArgumentParser(prog="python -m loadtests.reliability", description=__doc__)
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--short", action="store_true", help="the CI-sized run")
    ap.add_argument("--out", type=Path, help="report.json, plots, logs, video (default out/reliability/MODE)")
    ap.add_argument(
        "--graph", type=Path, help="graph file (default: graphs/redact_kafka.yaml of this package)"
    )
    ap.add_argument("--decode-only", action="store_true", help="graphs/decode_only.yaml")
    ap.add_argument(
        "--size", type=_size, help="camera WxH (default 1280x720; 640x360 in short and chaos runs)"
    )
    ap.add_argument("--streams", type=int, help="soak: cameras; chaos: plain cameras beside the fault ones")
    ap.add_argument("--steps", help="throughput: N to try, comma separated (default 1,2,3,4,6,8,12,...)")
    ap.add_argument("--step-s", type=float, help="throughput: measured seconds per step")
    ap.add_argument("--duration-s", type=float, help="soak: measured seconds after warm-up")
    ap.add_argument("--warmup-s", type=float)
    ap.add_argument(
        "--detect-size", type=_size, help="detector input WxH (default 320x192 in short and chaos)"
    )
    ap.add_argument("--graph-detect-size", action="store_true", help="keep the graph's detector input size")
    ap.add_argument("--triton-url", help="use this Triton instead of a private one (not in chaos)")
    ap.add_argument("--broker-outage-s", type=float, help="chaos: the broker's outage (30 s; 5 s short)")
    ap.add_argument("--leak-every", type=int, help="leak check of every k-th written frame (0: none)")
    a = ap.parse_args(argv)
    if a.mode == "chaos" and a.triton_url:
        ap.error("chaos restarts its own Triton: no --triton-url")
    opts = Options.defaults(a.mode, a.short, a.decode_only)
    given: dict[str, Any] = {
        "out": a.out,
        "graph": a.graph,
        "streams": a.streams,
        "steps": [int(x) for x in a.steps.split(",")] if a.steps else None,
        "step_s": a.step_s,
        "duration_s": a.duration_s,
        "warmup_s": a.warmup_s,
        "detect_size": a.detect_size,
        "triton_url": a.triton_url,
        "broker_outage_s": a.broker_outage_s,
        "leak_every": a.leak_every,
    }
    if a.size:
        given["width"], given["height"] = a.size
    opts = replace(opts, **{k: v for k, v in given.items() if v is not None})
    if a.graph_detect_size:
        opts.detect_size = None
    if a.broker_outage_s is not None and a.broker_outage_s < 30 and not a.short:
        opts.notes.append(f"broker outage shortened to {a.broker_outage_s} s by --broker-outage-s")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    report = run(opts)
    print(json.dumps({k: report[k] for k in ("mode", "short", "ok", "wall_s")}))
    for c in report["checks"]:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['value']} (bound {c['bound']})")
    print(f"report: {opts.out / 'report.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
