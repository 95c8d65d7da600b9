"""`framegraph eval`: the command line of engine/evaluation.py (report, baseline, gate)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engine.errors import FramegraphError, GraphConfigError
from engine.golden_set import EvalInputError
from operators.urls import scrub

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_GATE = 3


def add_parser(sub: Any) -> None:
    """Add the `eval` subcommand to the CLI's subparsers."""
    e = sub.add_parser(
        "eval",
        help="score a graph on a golden set (precision, recall, mAP@0.5, leak rate, latency); gate releases",
        description="Exit 0; 1: the run failed; 2: invalid graph, golden set or options; 3: the gate failed.",
    )
    e.add_argument("graph", type=Path)
    e.add_argument("--golden", type=Path, required=True, help="golden set dir (scripts/make_golden.py)")
    e.add_argument("--baseline", type=Path, help="a report of an earlier eval to compare with")
    e.add_argument("--gate", action="store_true", help="exit 3 on a regression beyond the thresholds")
    e.add_argument("--report", type=Path, help="write the report (JSON) here")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    e.add_argument("--max-drop", default="", help="e.g. recall=0.02,map50=0.02,precision=0.05")
    e.add_argument("--max-rise", default="", help="e.g. leak_rate=0,latency_p95_ms=50")
    e.add_argument("--node", help="score this node's detections (default: the last non-sink, non-redact)")
    e.add_argument("--fps", type=float, default=0.0, help="pace the images (latency as a camera sees it)")
    e.add_argument("--leak-threshold", type=float, default=0.5, help="face score a leak needs")
    e.add_argument("--output", type=Path, default=None, help="directory for what kept operators write")
    e.add_argument("--log-level", default="WARNING")
    e.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module or .py file first: its operators can be used (repeatable)",
    )


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_report(r: dict[str, Any]) -> None:
    det = r["detection"]
    print(
        f"eval {r['graph']['name']} on {r['golden']['path']}: {r['golden']['images']} images, "
        f"{r['golden']['labels']} labels; scored node {r['scored_node']}"
    )
    for m in r["models"]:
        sha = ", ".join(f"{f['path']} sha256 {f['sha256'][:16]}" for f in m["files"]) or "no local file"
        if not m.get("files_checked", True):
            sha += f" (this machine's copy: the server at {m['served_by']} has its own, not checked)"
        print(f"  model {m['model']} v{m['version'] or '?'} ({m['node']}): {sha}")
    print(f"  {'scope':<22} {'images':>6} {'labels':>6} {'precision':>9} {'recall':>7} {'mAP@0.5':>8}")
    rows = [("overall", det["overall"], r["golden"]["images"])]
    rows += [(f"slice {k}", v, r["golden"]["slices"][k]) for k, v in det["per_slice"].items()]
    rows += [(f"class {k}", v, "") for k, v in det["overall"]["per_class"].items()]
    for name, s, n in rows:
        print(
            f"  {name:<22} {n:>6} {s['labels']:>6} {_fmt(s['precision']):>9} {_fmt(s['recall']):>7} "
            f"{_fmt(s['map50']):>8}"
        )
    red = r["redaction"]
    if red is not None:
        found = f"{red['leaked']}/{red['faces']} faces found at score >= {red['threshold']}"
        print(
            f"  redaction ({red['node']}): leak rate {_fmt(red['leak_rate'])} ({found}), "
            f"{red['withheld_images']} images withheld"
        )
    lat = r["latency_ms"]
    print(
        f"  latency ms p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']}, {r['fps']} fps; "
        f"missing {len(r['images_missing'])}, degraded {len(r['images_degraded'])}"
    )


def read_baseline(path: Path) -> dict[str, Any]:
    """An earlier report to compare with; EvalInputError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise EvalInputError(f"baseline {path}: not found") from e
    except OSError as e:
        raise EvalInputError(f"baseline {path}: cannot be read: {e.strerror or e}") from e
    except ValueError as e:
        raise EvalInputError(f"baseline {path}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise EvalInputError(f"baseline {path}: not an eval report (a JSON object)")
    return data


def command(args: argparse.Namespace) -> int:
    """Run the eval, write and print the report, compare and gate; the exit status."""
    from engine.cli import run_async
    from engine.eval_gate import compare, describe, load_gate
    from engine.evaluation import LeakConfig, evaluate
    from engine.plan import load_plan

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.gate and args.baseline is None:
        print("eval: --gate needs --baseline", file=sys.stderr)
        return EXIT_INVALID
    try:
        plan = load_plan(args.graph, args.overrides)
        gate = load_gate(args.golden, args.max_drop, args.max_rise)
        baseline = read_baseline(args.baseline) if args.baseline else None
        leak = LeakConfig(threshold=args.leak_threshold)
    except GraphConfigError as e:
        print(f"invalid graph:\n{scrub(str(e))}", file=sys.stderr)
        return EXIT_INVALID
    except (FramegraphError, OSError, ValueError) as e:
        print(f"eval: {scrub(str(e))}", file=sys.stderr)
        return EXIT_INVALID
    try:
        report = run_async(
            evaluate(
                plan,
                args.golden,
                node=args.node,
                fps=args.fps,
                leak=leak,
                output_dir=args.output,
                overrides=args.overrides,
            )
        )
        if baseline is not None:
            report["gate"] = compare(report, baseline, gate)
    except EvalInputError as e:  # the golden set, the graph or an option: not a failed run
        print(f"eval: {scrub(str(e))}", file=sys.stderr)
        return EXIT_INVALID
    except FramegraphError as e:
        print(f"eval failed: {scrub(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
    print_report(report)
    verdict = report.get("gate")
    if verdict is None:
        return 0
    if verdict["model_changed"]:
        print("  model files differ from the baseline's (see report models / gate.baseline_model)")
    if verdict["passed"]:
        print(f"gate: passed ({len(verdict['checks'])} checks against {args.baseline})")
        return 0
    print(
        f"gate: {len(verdict['failures'])} regression(s) against {args.baseline}:",
        *describe(verdict),
        sep="\n",
    )
    return EXIT_GATE if args.gate else 0
