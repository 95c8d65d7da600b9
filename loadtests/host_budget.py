"""The host (CPU, GIL-holding) work per frame of the GPU graph, stage by stage, on any machine.

    python loadtests/host_budget.py [--frames 600] [--streams 64] [--fps 30] [--json out.json]

On a GPU the pixels never touch the host, yet every frame still costs Python work on the CPU:
demuxing its packet, decoding CenterFace's maps into boxes, tracking, building its events, and
the engine's hops between nodes. That work holds the GIL, so it caps what one process can carry
whatever the GPU does. This measures each stage here, in one thread, on real inputs:

- demux: PyAV demuxing a 1080p30 H.264 clip (what decode.nvdec does before NVDEC);
- postprocess: postprocess.centerface on CenterFace's real outputs for a 640x384 input of the
  photo clip (the ONNX model run once, here, by onnxruntime; mapped back through the letterbox);
- track: track.bytetrack on those detections, frame after frame of one stream;
- events: sink.jsonl's `events` mode serialising them (what sink.kafka sends per frame);
- hops: the runtime's cost per node per frame (loadtests/engine_overhead.py's figure, measured
  here again on a short chain), times the GPU graph's 6 nodes.

Baseline beside it: the budget one process has per frame at `streams` x `fps` (1 s / frames per
second). It prints the sum, its ratio to that budget (> 1: one process cannot keep up, whatever
the GPU does) and the processes `framegraph run --processes` then needs at full use of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from engine.frame import Frame, StreamInfo, now_ns  # noqa: E402
from engine.metrics import NodeMetrics  # noqa: E402
from engine.registry import OperatorContext  # noqa: E402
from engine.samples import make_clip  # noqa: E402
from operators.demux import Demuxer  # noqa: E402
from operators.postprocess import CenterFaceConfig, CenterFacePostprocess  # noqa: E402
from operators.preprocess import PreprocessConfig, preprocess_image  # noqa: E402
from operators.sinks import JsonlConfig, JsonlSink  # noqa: E402
from operators.track import ByteTrack, ByteTrackConfig  # noqa: E402

MODEL = ROOT / "triton_models/centerface/1/centerface.onnx"
GRAPH_NODES = 6  # decode, preprocess, detect, postprocess, track, events (loadtests/gpu_bench.py)


def per_frame_us(fn: Callable[[int], None], frames: int) -> float:
    """CPU time (this thread) per call of fn(i), over `frames` calls after 20 warm-up calls."""
    for i in range(min(20, frames)):
        fn(i)
    t0 = time.thread_time_ns()
    for i in range(frames):
        fn(i)
    return (time.thread_time_ns() - t0) / frames / 1e3


def demux_us(clip: Path, frames: int) -> float:
    """CPU time per packet of Demuxer.packets (a camera's steady state: opening the file again at
    the end of the short clip is not timed)."""
    spent_ns = done = 0
    while done < frames:
        demuxer = Demuxer("cam0", str(clip))
        try:
            packets = iter(demuxer.packets())
            while done < frames:
                t0 = time.thread_time_ns()
                packet = next(packets, None)
                spent_ns += time.thread_time_ns() - t0
                if packet is None:
                    break
                done += 1
        finally:
            demuxer.close()
    return spent_ns / frames / 1e3


def model_outputs(clip: Path, count: int) -> tuple[list[dict[str, np.ndarray]], Any]:
    """CenterFace's outputs for the first `count` frames of the clip, and their letterbox."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the exported model's initializer warnings are noise here
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    cfg = PreprocessConfig(width=640, height=384, mode="letterbox", channels="rgb")
    names = [o.name for o in session.get_outputs()]
    outs: list[dict[str, np.ndarray]] = []
    letterbox = None
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            tensor, letterbox = preprocess_image(frame.to_ndarray(format="rgb24"), "rgb24", cfg)
            result = session.run(None, {session.get_inputs()[0].name: tensor[None].astype(np.float32)})
            outs.append({n: np.asarray(r)[0] for n, r in zip(names, result, strict=True)})
            if len(outs) == count:
                break
    return outs, letterbox


IMAGE = np.zeros((1080, 1920, 3), np.uint8)  # stands in for the CUDA frame: shape only


def frame_at(i: int, outputs: dict[str, np.ndarray], letterbox: Any) -> Frame:
    return Frame("cam0", i, i * 3000, now_ns(), IMAGE, outputs=outputs, letterbox=letterbox)


def operator_stages(clip: Path, frames: int, out_dir: Path) -> dict[str, Any]:
    outs, letterbox = model_outputs(clip, 30)
    loop = asyncio.new_event_loop()

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        """An operator's coroutine to its result: stepped directly when it never waits (these run
        inline on the event loop in a graph, and the loop's own turn is in `hops`)."""
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise RuntimeError("the operator awaited: time it in a graph instead")

    post = CenterFacePostprocess(
        CenterFaceConfig(threshold=0.2), OperatorContext("post", NodeMetrics("post"))
    )
    track = ByteTrack(ByteTrackConfig(hold_last_frame=False), OperatorContext("track", NodeMetrics("track")))
    sink_ctx = OperatorContext("events", NodeMetrics("events"), output_dir=out_dir, graph_name="host_budget")
    sink = JsonlSink(JsonlConfig(path="events.jsonl", mode="events"), sink_ctx)
    loop.run_until_complete(track.on_stream_start(StreamInfo("cam0", width=1920, height=1080, fps=30.0)))
    loop.run_until_complete(sink.setup())
    decoded = [run(post.process(frame_at(i, o, letterbox)))[0] for i, o in enumerate(outs)]
    faces = sum(len(f.detections) for f in decoded if isinstance(f, Frame) and f.detections is not None)
    tracked: list[Frame] = []

    def do_post(i: int) -> None:
        run(post.process(frame_at(i, outs[i % len(outs)], letterbox)))

    def do_track(i: int) -> None:
        src = decoded[i % len(decoded)]
        assert isinstance(src, Frame)
        f = frame_at(i, {}, letterbox)
        f.detections = src.detections
        tracked.append(run(track.process(f))[0])

    def do_events(i: int) -> None:
        run(sink.process(tracked[i % len(tracked)]))

    try:
        return {
            "postprocess": per_frame_us(do_post, frames),
            "track": per_frame_us(do_track, frames),
            "events": per_frame_us(do_events, frames),
            "faces_per_frame": round(faces / len(decoded), 2),
        }
    finally:
        loop.run_until_complete(sink.teardown())
        loop.close()


def hop_us(frames: int) -> float:
    """The runtime's µs per node per frame (engine_overhead's chain: 4 streams, 5 nodes, wall time)."""
    from loadtests.engine_overhead import engine_run

    return engine_run(4, max(500, frames), 5) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=600, help="frames timed per stage")
    ap.add_argument("--streams", type=int, default=64, help="the target: streams per GPU")
    ap.add_argument("--fps", type=float, default=30.0, help="the target: frames per second per stream")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not MODEL.exists():
        print(f"no {MODEL.relative_to(ROOT)}: run scripts/setup_models first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip1080.mp4", 1920, 1080, seconds=2, bitrate=8_000_000)
        stages = {"demux": demux_us(clip, args.frames)}
        stages.update(operator_stages(clip, args.frames, Path(tmp)))
    faces = stages.pop("faces_per_frame")
    stages["hops"] = GRAPH_NODES * hop_us(args.frames)
    total = round(sum(stages.values()), 1)
    budget = 1e6 / (args.streams * args.fps)
    figures = {
        "us_per_frame": {k: round(v, 1) for k, v in stages.items()},
        "faces_per_frame": faces,
        "total_us_per_frame": round(total, 1),
        "target": f"{args.streams} streams x {args.fps:g} fps in one process",
        "budget_us_per_frame": round(budget, 1),
        "ratio_to_budget": round(total / budget, 3),
        "frames_per_core_s": round(1e6 / total),
        "streams_per_core": round(1e6 / total / args.fps, 1),
        "processes_at_full_core": -(-args.streams * args.fps * total // 1e6),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
