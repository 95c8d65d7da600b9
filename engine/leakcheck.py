"""Leak checks of redacted video: CenterFace run in-process (onnxruntime) over every output frame.

A face the detector still finds above its threshold in a redacted frame is a leak. The check
uses the same model, input size and decoding as the pipeline (preprocess_image ->
centerface.onnx -> decode_centerface), independent of any server. onnxruntime is a dev
dependency: this module is for tests and load tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.golden import FloatArray, Image, iou_matrix
from operators.postprocess import decode_centerface
from operators.preprocess import PreprocessConfig, preprocess_image

ROOT = Path(__file__).resolve().parents[1]
CENTERFACE_ONNX = ROOT / "triton_models" / "centerface" / "1" / "centerface.onnx"
OUTPUTS = ["537", "538", "539", "540"]


class CenterFaceOnnx:
    """CenterFace on the CPU with onnxruntime: RGB frames in, face boxes (source pixels) out."""

    def __init__(self, model: Path = CENTERFACE_ONNX, width: int = 640, height: int = 384, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the exporter's initializer-as-input warnings
        options.intra_op_num_threads = threads
        self.session: Any = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.cfg = PreprocessConfig(width=width, height=height, channels="rgb", layout="chw", dtype="float32")

    def detect(self, image: Image, threshold: float = 0.3) -> tuple[FloatArray, FloatArray]:
        """(xyxy, score) of the faces in one RGB frame, in its pixels."""
        tensor, letterbox = preprocess_image(image, "rgb24", self.cfg)
        heat, scale, offset, lms = (m[0] for m in self.session.run(OUTPUTS, {"input.1": tensor[None]}))
        xyxy, score, _ = decode_centerface(heat, scale, offset, lms, threshold)
        return letterbox.to_source(xyxy), score


@dataclass
class LeakReport:
    """Faces found in a video's frames: how many frames leak, and the worst score."""

    frames: int = 0
    leaked_frames: int = 0
    faces: int = 0
    max_score: float = 0.0
    where: list[tuple[int, list[float], float]] = field(default_factory=list)  # (frame, box, score)

    @property
    def leak_rate(self) -> float:
        return self.leaked_frames / self.frames if self.frames else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "leaked_frames": self.leaked_frames,
            "leak_rate": round(self.leak_rate, 4),
            "faces_found": self.faces,
            "max_score": round(self.max_score, 3),
        }


def check_frames(detector: CenterFaceOnnx, frames: list[Image], threshold: float = 0.3) -> LeakReport:
    """Run the detector over every frame; any face at or above `threshold` counts as a leak."""
    report = LeakReport()
    for i, image in enumerate(frames):
        xyxy, score = detector.detect(image, threshold)
        report.frames += 1
        if len(score):
            report.leaked_frames += 1
            report.faces += len(score)
            report.max_score = max(report.max_score, float(score.max()))
            report.where += [
                (i, [round(float(v), 1) for v in b], round(float(s), 3))
                for b, s in zip(xyxy, score, strict=True)
            ]
    return report


def check_against_input(
    detector: CenterFaceOnnx,
    inputs: list[Image],
    outputs: list[Image],
    threshold: float = 0.3,
    iou: float = 0.3,
) -> LeakReport:
    """Leaks of the faces the input showed: output faces overlapping an input face of the same frame.

    For inputs whose backdrop itself holds face-like patterns the detector does not find in the
    input (a heavily blurred photo of a face), redaction around them may make them score; those
    are not the input's faces and are not counted here (`check_frames` counts everything).
    """
    report = LeakReport()
    for i, (before, after) in enumerate(zip(inputs, outputs, strict=True)):
        faces, _ = detector.detect(before, threshold)
        found, score = detector.detect(after, threshold)
        report.frames += 1
        if len(faces) and len(found):
            hit = iou_matrix(found, faces).max(1) >= iou
            if hit.any():
                report.leaked_frames += 1
                report.faces += int(hit.sum())
                report.max_score = max(report.max_score, float(score[hit].max()))
                report.where += [
                    (i, [round(float(v), 1) for v in found[j]], float(score[j])) for j in np.nonzero(hit)[0]
                ]
    return report


def face_free(detector: CenterFaceOnnx, image: Image, threshold: float = 0.3) -> bool:
    """True when the detector finds no face in the frame."""
    return len(detector.detect(image, threshold)[1]) == 0


def detection_rate(detector: CenterFaceOnnx, frames: list[Image], threshold: float = 0.3) -> float:
    """Share of frames with at least one face (for inputs: how many frames had faces to hide)."""
    return float(np.mean([not face_free(detector, f, threshold) for f in frames])) if frames else 0.0
