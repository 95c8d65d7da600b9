"""The eval gate: compare a report with a baseline report; regressions beyond thresholds fail.

Thresholds, each later source overriding the earlier per metric:
  1. defaults: max_drop recall=0.02, map50=0.02, precision=0.05; max_rise leak_rate=0.0
  2. DIR/gate.json of the golden set: {"max_drop": {...}, "max_rise": {...}, "scopes": [...]}
  3. the command line: --max-drop recall=0.01,map50=0.03 --max-rise leak_rate=0.01,latency_p95_ms=50

max_drop (absolute, 0..1) applies to precision, recall and map50; max_rise to leak_rate (absolute)
and latency_p50_ms / latency_p95_ms / latency_p99_ms (ms; not gated unless asked: timings depend on
the machine). Scopes: `overall`, every `slices` entry and every `classes` entry of the baseline
(all three by default; leak rate per slice under `slices`). A metric with nothing to measure
(None) on either side is skipped; a slice or class the baseline has and the report lacks fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from engine.errors import FramegraphError
from engine.golden_set import annotations_path
from engine.spec import StrictModel

DROP_METRICS = ("precision", "recall", "map50")
RISE_METRICS = ("leak_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
Scope = Literal["overall", "slices", "classes"]
SCOPES: tuple[Scope, ...] = ("overall", "slices", "classes")
GATE_FILE = "gate.json"
_EPS = 1e-9


class GateConfig(StrictModel):
    """How far each metric may move against the baseline before the gate fails."""

    max_drop: dict[str, float] = Field(
        default_factory=lambda: {"recall": 0.02, "map50": 0.02, "precision": 0.05}
    )
    max_rise: dict[str, float] = Field(default_factory=lambda: {"leak_rate": 0.0})
    scopes: list[Scope] = Field(default_factory=lambda: list(SCOPES))


def parse_thresholds(text: str, allowed: tuple[str, ...]) -> dict[str, float]:
    """'recall=0.02,map50=0.03' -> {'recall': 0.02, 'map50': 0.03}; FramegraphError if malformed."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in allowed:
            raise FramegraphError(
                f"threshold {part!r}: expected NAME=VALUE with NAME in {', '.join(allowed)}"
            )
        try:
            out[name] = float(value)
        except ValueError as e:
            raise FramegraphError(f"threshold {part!r}: {value!r} is not a number") from e
        if out[name] < 0:
            raise FramegraphError(f"threshold {part!r}: must be >= 0")
    return out


def load_gate(golden: str | Path, max_drop: str = "", max_rise: str = "") -> GateConfig:
    """Defaults, then the golden set's gate.json, then the command line's thresholds."""
    gate = GateConfig()
    path = annotations_path(golden).parent / GATE_FILE
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            GateConfig.model_validate(raw)  # unknown keys and bad values are errors
        except (ValueError, ValidationError) as e:
            raise FramegraphError(f"{path}: invalid gate file: {e}") from e
        for key, allowed in (("max_drop", DROP_METRICS), ("max_rise", RISE_METRICS)):
            unknown = set(raw.get(key, {})) - set(allowed)
            if unknown:
                raise FramegraphError(f"{path}: {key}: unknown metrics {sorted(unknown)}")
        gate = GateConfig(
            max_drop={**gate.max_drop, **raw.get("max_drop", {})},
            max_rise={**gate.max_rise, **raw.get("max_rise", {})},
            scopes=raw.get("scopes", gate.scopes),
        )
    return GateConfig(
        max_drop={**gate.max_drop, **parse_thresholds(max_drop, DROP_METRICS)},
        max_rise={**gate.max_rise, **parse_thresholds(max_rise, RISE_METRICS)},
        scopes=gate.scopes,
    )


def _values(report: dict[str, Any], scopes: list[Scope]) -> dict[tuple[str, str], float | None]:
    """(scope, metric) -> value for every gated figure of a report; scope 'slice:low_light' etc."""
    out: dict[tuple[str, str], float | None] = {}
    det = report["detection"]
    rows = {"overall": det["overall"]} if "overall" in scopes else {}
    if "slices" in scopes:
        rows |= {f"slice:{k}": v for k, v in det["per_slice"].items()}
    if "classes" in scopes:
        rows |= {f"class:{k}": v for k, v in det["overall"]["per_class"].items()}
    for scope, row in rows.items():
        out |= {(scope, m): row.get(m) for m in DROP_METRICS}
    red = report.get("redaction")
    if red is not None:
        if "overall" in scopes:
            out[("overall", "leak_rate")] = red["leak_rate"]
        if "slices" in scopes:
            out |= {(f"slice:{k}", "leak_rate"): v["leak_rate"] for k, v in red["per_slice"].items()}
    for p in ("p50", "p95", "p99"):
        out[("overall", f"latency_{p}_ms")] = report.get("latency_ms", {}).get(p)
    return out


def compare(report: dict[str, Any], baseline: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """The gate's verdict: every check made, the failures among them, and whether it passed."""
    if report["golden"]["sha256"] != baseline["golden"]["sha256"]:
        raise FramegraphError(
            "the baseline was measured on another golden set (annotations sha256 "
            f"{baseline['golden']['sha256'][:12]} here {report['golden']['sha256'][:12]}): not comparable"
        )
    now, before = _values(report, gate.scopes), _values(baseline, gate.scopes)
    checks: list[dict[str, Any]] = []
    for (scope, metric), old in before.items():
        limit, sign = (
            (gate.max_drop.get(metric), -1) if metric in DROP_METRICS else (gate.max_rise.get(metric), 1)
        )
        if limit is None:
            continue
        check: dict[str, Any] = {"scope": scope, "metric": metric, "baseline": old, "limit": limit}
        value = now.get((scope, metric))
        if (scope, metric) not in now:
            check |= {"value": None, "passed": False, "why": "missing from this report"}
        elif old is None or value is None:
            check |= {"value": value, "passed": True, "why": "nothing to measure"}
        else:
            delta = value - old
            check |= {"value": value, "change": round(delta, 6), "passed": delta * sign <= limit + _EPS}
        checks.append(check)
    failures = [c for c in checks if not c["passed"]]
    return {
        "passed": not failures,
        "failures": failures,
        "checks": checks,
        "thresholds": gate.model_dump(),
        "baseline_model": baseline.get("models"),
        "model_changed": baseline.get("models") != report.get("models"),
    }


def describe(verdict: dict[str, Any]) -> list[str]:
    """One line per failed check, for the console."""
    lines = []
    for c in verdict["failures"]:
        if c["value"] is None:
            lines.append(f"  {c['scope']} {c['metric']}: {c['why']}")
        else:
            word = "dropped" if c["metric"] in DROP_METRICS else "rose"
            lines.append(
                f"  {c['scope']} {c['metric']}: {c['baseline']} -> {c['value']} "
                f"({word} {abs(c['change']):.4g}, allowed {c['limit']})"
            )
    return lines
