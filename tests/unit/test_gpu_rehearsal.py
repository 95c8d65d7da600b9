"""loadtests/gpu_rehearsal.py: the simulated GPU books its engines one call after another, the
stand-ins replace exactly the benchmark graph's three GPU operators, and the recorded model
replays its frames without jumps."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from loadtests import bench_graph
from loadtests.gpu_rehearsal import (
    OUTPUTS_ENV,
    SUBSTITUTES,
    RecordedModel,
    SimGpu,
    SimTimes,
    rehearsal_yaml,
)


def _calls_in_threads(gpu: SimGpu, engine: str, calls: int, device_us: float) -> float:
    """Wall seconds for `calls` concurrent calls of `device_us` each on `engine`."""
    threads = [threading.Thread(target=gpu.call, args=(engine, device_us, 0.0)) for _ in range(calls)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def test_an_engine_serves_one_call_at_a_time_and_a_share_slows_it() -> None:
    gpu = SimGpu(SimTimes())
    wall_s = _calls_in_threads(gpu, "nvdec", 10, 5000.0)
    assert wall_s >= 10 * 0.005  # ten 5 ms calls on one engine cannot overlap
    assert gpu.busy_s["nvdec"] == pytest.approx(0.05)
    assert gpu.busy_s["sm"] == 0.0  # the other engine was not booked

    shared = SimGpu(SimTimes(), share=4)  # one of four processes: a quarter of the device
    assert _calls_in_threads(shared, "sm", 3, 5000.0) >= 3 * 0.020
    assert shared.busy_s["sm"] == pytest.approx(0.06)


def test_the_two_engines_work_side_by_side() -> None:
    """NVDEC and the SMs are separate: a decode does not wait for a forward pass."""
    gpu = SimGpu(SimTimes())
    slow = threading.Thread(target=gpu.call, args=("sm", 200_000.0, 0.0))
    slow.start()
    time.sleep(0.01)
    t0 = time.perf_counter()
    gpu.call("nvdec", 1000.0, 0.0)
    waited_s = time.perf_counter() - t0
    slow.join()
    assert waited_s < 0.15  # not behind the 200 ms forward pass


def test_times_come_from_the_environment_and_unknown_fields_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FG_REHEARSAL_TIMES", '{"model_us_per_frame": 222}')
    assert SimTimes.from_env().model_us_per_frame == 222.0
    assert SimTimes.from_env().decode_us == SimTimes().decode_us
    monkeypatch.setenv("FG_REHEARSAL_TIMES", '{"model_ms": 1}')
    with pytest.raises(KeyError, match="model_ms"):
        SimTimes.from_env()


def test_the_h200_preset_has_its_measured_rates_and_overrides_still_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FG_REHEARSAL_GPU", "h200")
    h200 = SimTimes.from_env()
    assert 1e6 / h200.decode_us == pytest.approx(2500)  # NVDEC, ../shared/docs/gpu.md
    batch32_s = (h200.model_us_fixed + 32 * h200.model_us_per_frame) / 1e6
    assert 32 / batch32_s == pytest.approx(4551, rel=1e-3)  # CenterFace fp16 at batch 32
    assert h200.preprocess_host_us == SimTimes().preprocess_host_us  # host estimates unchanged
    monkeypatch.setenv("FG_REHEARSAL_TIMES", '{"decode_us": 300}')
    assert SimTimes.from_env().decode_us == 300.0
    monkeypatch.setenv("FG_REHEARSAL_GPU", "a100")
    with pytest.raises(KeyError, match="a100"):
        SimTimes.from_env()


def test_the_rehearsal_graph_is_the_bench_graph_with_its_gpu_operators_swapped() -> None:
    from engine.plan import build_plan
    from engine.yamlsource import load_text

    real = bench_graph.graph_yaml(Path("/tmp/clip.mp4"), [0, 1], "native")
    text = rehearsal_yaml(real)
    plan = build_plan(load_text(text, "rehearsal"))  # the stand-ins are registered operators
    ops = {n.spec.id: n.op for n in plan.nodes}
    assert ops == {
        "decode": "rehearsal.decode",
        "pre": "rehearsal.preprocess",
        "detect": "rehearsal.infer",
        "post": "postprocess.centerface",
        "track": "track.bytetrack",
        "events": "sink.jsonl",
    }
    # everything but the three op names is the benchmark's own (queues, batching, workers)
    restored = text
    for real_op, stand_in in SUBSTITUTES.items():
        restored = restored.replace(stand_in, real_op)
    assert restored == real


def test_a_bench_graph_without_a_gpu_operator_is_refused() -> None:
    real = bench_graph.graph_yaml(Path("/tmp/clip.mp4"), [0], "native")
    with pytest.raises(ValueError, match=r"infer\.torch"):
        rehearsal_yaml(real.replace("op: infer.torch", "op: infer.triton"))


def test_the_recording_plays_forwards_then_backwards(tmp_path: Path) -> None:
    path = tmp_path / "outputs.npz"
    np.savez(path, heatmap=np.arange(5, dtype=np.float32).reshape(5, 1))
    model = RecordedModel(path, SimGpu(SimTimes(), share=1))
    rows = [model.row(seq) for seq in range(20)]
    assert rows[:9] == [0, 1, 2, 3, 4, 3, 2, 1, 0]
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(rows))  # no jumps
    out = model.run([np.int64(1), np.int64(6)], ["heatmap"])
    assert out["heatmap"].tolist() == [[1.0], [2.0]]


async def test_the_infer_stand_in_needs_its_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.metrics import NodeMetrics
    from engine.registry import OperatorContext
    from loadtests.gpu_rehearsal import RehearsalInfer
    from operators.infer_torch import TorchInferConfig

    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    op = RehearsalInfer(TorchInferConfig(), OperatorContext("detect", NodeMetrics("detect")))
    with pytest.raises(RuntimeError, match=OUTPUTS_ENV):
        await op.setup()


@pytest.mark.parametrize(
    ("cores", "streams", "expected"),
    [(16, 64, 4), (16, 96, 6), (16, 32, 2), (16, 8, 1), (2, 64, 1), (8, 96, 4)],
)
def test_bench_auto_processes_take_about_16_streams_each_within_half_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, streams: int, expected: int
) -> None:
    """What the rehearsal chose: 8 streams per process held p95 239 ms, 16 held 132 ms."""
    from engine import shards

    monkeypatch.setattr(shards, "cpu_count", lambda: cores)
    assert bench_graph.processes_for("auto", streams) == expected
    assert bench_graph.processes_for("3", streams) == 3
