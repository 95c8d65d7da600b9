"""Evaluation of a graph on a golden set: detection quality per class and slice, leaks, latency.

The graph is validated as written (with its `--set` overrides), then rewired for the run:
its sources become one `source.images` stream of the golden set (decoded RGB frames), so its
decoders (`decode*` nodes) are bypassed and its terminal sinks (`sink.*` without consumers)
left out; an internal collector is attached to the node whose detections are scored (`node`;
by default the last node that is neither a sink nor `redact`) and, when the graph redacts, one
to the `redact` node that runs CenterFace (onnxruntime, in-process) on the redacted frames.
Latency is capture (the image emitted) to the scored node's output, under full load unless
`fps` paces the source.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from engine.errors import FramegraphError
from engine.eval_metrics import Prediction, score_detections, score_leaks
from engine.frame import Frame, Item
from engine.golden_set import (
    EvalInputError,
    GoldenSet,
    annotations_path,
    file_sha256,
    image_path,
    load_golden_set,
)
from engine.plan import Edge, GraphPlan, NodePlan, source_plan
from engine.registry import EmptyConfig, Operator, OperatorContext
from engine.runtime import RunOptions, Runtime
from engine.spec import NodeSpec, QueueSpec, StrictModel
from operators.urls import is_local_address, redact_url

ROOT = Path(__file__).resolve().parents[1]
DETECTIONS_NODE = "_eval_detections"
LEAKS_NODE = "_eval_leaks"
CENTERFACE = ROOT / "triton_models" / "centerface" / "1" / "centerface.onnx"
_CENTERFACE_OUTPUTS = ["537", "538", "539", "540"]


class DetectionCollector(Operator[EmptyConfig]):
    """Keeps each frame's detections by golden image id (frames pass on: latency ends here)."""

    def __init__(self, config: EmptyConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.preds: dict[int, Prediction] = {}
        self.degraded: list[int] = []
        self.without_detections = 0

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame) and "image_id" in item.meta:
            image_id, det = int(item.meta["image_id"]), item.detections
            if det is None or det.degraded:
                self.without_detections += det is None
                self.degraded.append(image_id)
                self.preds[image_id] = Prediction()
            else:
                self.preds[image_id] = Prediction(det.xyxy.copy(), det.score.copy(), det.class_id.copy())
        return (item,)


class LeakConfig(StrictModel):
    """The detector that looks for faces left on redacted frames."""

    model: str = str(CENTERFACE)
    threshold: float = Field(0.5, gt=0, lt=1)
    width: int = 640
    height: int = 384


class LeakCollector(Operator[LeakConfig]):
    """Runs CenterFace (onnxruntime) on each redacted frame; keeps the boxes found by image id."""

    Config = LeakConfig

    def __init__(self, config: LeakConfig, ctx: OperatorContext) -> None:
        super().__init__(config, ctx)
        self.found: dict[int, np.ndarray] = {}
        self.session: Any = None

    async def setup(self) -> None:
        self.session = await self.ctx.run_blocking(self._load)

    def _load(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise FramegraphError("the leak check needs onnxruntime (pip install onnxruntime)") from e
        if not Path(self.config.model).is_file():
            raise FramegraphError(f"leak check: {self.config.model} missing; run scripts/setup_models.py")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(self.config.model, options, providers=["CPUExecutionProvider"])

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Face boxes (xyxy, source pixels) scored above the threshold in an RGB image."""
        from operators.postprocess import decode_centerface
        from operators.preprocess import PreprocessConfig, preprocess_image

        cfg = PreprocessConfig(width=self.config.width, height=self.config.height, channels="rgb")
        tensor, letterbox = preprocess_image(image, "rgb24", cfg)
        heat, scale, offset, lms = (
            m[0] for m in self.session.run(_CENTERFACE_OUTPUTS, {"input.1": tensor[None]})
        )
        xyxy, _, _ = decode_centerface(heat, scale, offset, lms, threshold=self.config.threshold)
        return letterbox.to_source(xyxy)

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item, Frame) and "image_id" in item.meta and item.meta.get("redaction") != "withheld":
            # a withheld frame goes on covered for its audit event, but no video sink writes it
            self.found[int(item.meta["image_id"])] = await self.ctx.run_blocking(self.detect, item.image)
        return ()


@dataclass
class EvalPlan:
    """The rewired plan and what the eval reads from it."""

    plan: GraphPlan
    node: str  # whose detections are scored
    redact: str | None  # the redaction node, when the graph redacts


def eval_plan(
    plan: GraphPlan, golden: Path, node: str | None = None, fps: float = 0.0, leak: LeakConfig | None = None
) -> EvalPlan:
    """`plan` fed by the golden set instead of its sources, with collectors attached."""
    decoders = {n.spec.id for n in plan.nodes if n.op.startswith("decode")}
    consumed = {e.src for e in plan.edges}
    sinks = {n.spec.id for n in plan.nodes if n.op.startswith("sink.") and n.spec.id not in consumed}
    inputs = decoders | {s.spec.id for s in plan.sources}
    sid = plan.sources[0].spec.id
    source = source_plan({"id": sid, "url": str(golden), "op": "source.images", "config": {"fps": fps}})
    kept = [n for n in plan.nodes if n.spec.id not in decoders | sinks]
    kept_ids = {n.spec.id for n in kept}
    edges: list[Edge] = []
    for e in plan.edges:
        edge = Edge(sid if e.src in inputs else e.src, e.dst, e.queue)
        if e.dst in kept_ids and edge not in edges:
            edges.append(edge)
    scorable = [n.spec.id for n in kept if n.op != "redact" and not n.op.startswith("sink.")]
    if node is None:
        if not scorable:
            raise EvalInputError("the graph has no node whose detections could be scored")
        node = scorable[-1]
    elif node not in kept_ids:
        raise EvalInputError(f"--node {node!r}: no such node (or a decoder or sink the eval leaves out)")
    redact = next((n.spec.id for n in kept if n.op == "redact"), None)
    nodes = list(kept)
    if redact is not None:
        nodes.append(_collector(LEAKS_NODE, redact, LeakCollector, leak or LeakConfig()))
        edges.append(Edge(redact, LEAKS_NODE, QueueSpec()))
    nodes.append(_collector(DETECTIONS_NODE, node, DetectionCollector, EmptyConfig()))  # last: latency
    edges.append(Edge(node, DETECTIONS_NODE, QueueSpec()))
    rewired = GraphPlan(plan.spec, [source], nodes, edges, plan.origin, plan.device, plan.device_reason)
    return EvalPlan(rewired, node, redact)


def _collector(node_id: str, src: str, cls: type[Operator[Any]], config: StrictModel) -> NodePlan:
    return NodePlan(
        NodeSpec(id=node_id, op=node_id, inputs=[src], queue=QueueSpec(size=64)), cls, config, node_id
    )


def model_identities(plan: GraphPlan) -> list[dict[str, Any]]:
    """Model, version and sha256 of the model files of each inference node (for release diffs).

    The files are this machine's model repository. For infer.triton, `served_by` says which server
    ran the model and `files_checked` whether those files are the ones it served: a remote server
    (another host) has its own repository, which is not seen from here."""
    repo = Path(os.environ.get("FG_TRITON_MODEL_REPO", "triton_models"))
    repo = repo if repo.is_absolute() else ROOT / repo
    out: list[dict[str, Any]] = []
    for n in plan.nodes:
        cfg = n.config
        if n.op == "infer.triton":
            model, requested = str(getattr(cfg, "model")), str(getattr(cfg, "version"))  # noqa: B009
            versions = sorted(
                (int(p.name) for p in (repo / model).glob("[0-9]*") if p.name.isdigit()), reverse=True
            )
            version = requested or (str(versions[0]) if versions else "")
            files = sorted((repo / model / version).glob("*.onnx")) if version else []
            url = str(getattr(cfg, "url", "") or "")
            served_by = redact_url(url) if url else "a local server the run started"
            files_checked = not url or is_local_address(url)
        elif hasattr(cfg, "onnx_path"):
            path = Path(str(getattr(cfg, "onnx_path")))  # noqa: B009
            model, requested, version = path.stem, "", ""
            served_by, files_checked = "in process", True
            files = [p for p in (path, ROOT / path) if p.is_file()][:1]
        else:
            continue
        out.append(
            {
                "node": n.spec.id,
                "op": n.op,
                "model": model,
                "version": version,
                "version_pinned": bool(requested),
                "files": [{"path": _rel(p), "sha256": file_sha256(p)} for p in files],
                "served_by": served_by,
                "files_checked": files_checked,
            }
        )
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _check_images(golden: GoldenSet, location: Path) -> None:
    missing = [im.file_name for im in golden.images if not image_path(location, im).is_file()]
    if missing:
        raise EvalInputError(f"golden set {location}: {len(missing)} image(s) missing, e.g. {missing[0]}")


async def evaluate(
    plan: GraphPlan,
    golden_dir: str | Path,
    *,
    node: str | None = None,
    fps: float = 0.0,
    leak: LeakConfig | None = None,
    output_dir: Path | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run `plan` over the golden set; return the report (JSON-ready)."""
    location = Path(golden_dir)
    golden = load_golden_set(location)
    _check_images(golden, location)
    ep = eval_plan(plan, location, node, fps, leak)
    with tempfile.TemporaryDirectory(prefix="framegraph-eval-") as tmp:
        runtime = Runtime(ep.plan, RunOptions(output_dir=output_dir or Path(tmp)))
        summary = await runtime.run()
    det = runtime.operator(DETECTIONS_NODE)
    assert isinstance(det, DetectionCollector)
    if det.without_detections and det.without_detections == len(det.preds):
        raise EvalInputError(f"node {ep.node!r} sets no detections: pick the detector's node with --node")
    ids = [im.id for im in golden.images]
    redaction = None
    if ep.redact is not None:
        leaks = runtime.operator(LEAKS_NODE)
        assert isinstance(leaks, LeakCollector)
        cfg = leaks.config
        redaction = {"node": ep.redact, "threshold": cfg.threshold, "detector": _rel(Path(cfg.model))}
        redaction |= score_leaks(golden, leaks.found)
    nodes = {k: v for k, v in summary["nodes"].items() if k not in (DETECTIONS_NODE, LEAKS_NODE)}
    return {
        "report": "framegraph-eval/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "graph": {"name": plan.spec.name, "file": plan.origin, "overrides": list(overrides)},
        "golden": {
            "path": str(location),
            "sha256": file_sha256(annotations_path(location)),
            "images": len(golden.images),
            "labels": len(golden.annotations),
            "slices": {k: len(v) for k, v in golden.slices().items()},
        },
        "models": model_identities(plan),
        "scored_node": ep.node,
        "images_out": len(det.preds),
        "images_missing": [i for i in ids if i not in det.preds],
        "images_degraded": det.degraded,
        "detection": score_detections(golden, det.preds),
        "redaction": redaction,
        "latency_ms": summary["latency_ms"],
        "fps": summary["fps"],
        "source_fps": fps,
        "duration_s": summary["duration_s"],
        "nodes": {
            k: {f: v[f] for f in ("in", "out", "dropped", "errors", "work_ms") if f in v}
            for k, v in nodes.items()
        },
    }
