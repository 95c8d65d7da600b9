"""loadtests/bench_window.py's stage figures: a node's queue wait and work inside a measuring
window only, its own whole-run figures untouched, and windows of several processes pooled."""

from __future__ import annotations

from engine.metrics import Metrics
from loadtests.bench_window import Stages, merge_stage_raw, stage_figures


def test_stages_count_only_the_window_and_leave_the_whole_run_figures_whole() -> None:
    metrics = Metrics()
    node = metrics.node("detect")
    node.queue_wait.add(500.0)  # start-up: outside the window
    with Stages(metrics) as stages:
        for ms in (1.0, 2.0, 3.0):
            metrics.node("detect").queue_wait.add(ms)
            metrics.node("detect").work.add(10 * ms)
    node.queue_wait.add(900.0)  # the drain: outside too
    figures = stage_figures(stages.raw())
    assert figures["detect"]["queue_wait_ms"]["p50"] == 2.0
    assert figures["detect"]["queue_wait_ms"]["p99"] < 3.1  # neither 500 nor 900 ms
    assert figures["detect"]["work_ms"]["p50"] == 20.0
    assert sorted(metrics.node("detect").queue_wait.samples) == [1.0, 2.0, 3.0, 500.0, 900.0]
    assert type(metrics.node("detect").queue_wait).__name__ == "LatencySamples"  # restored


def test_nodes_without_samples_are_left_out_and_processes_pool() -> None:
    a = {"decode": {"queue_wait": [1.0, 1.0], "work": [4.0]}, "cam000": {"queue_wait": [], "work": []}}
    b = {"decode": {"queue_wait": [9.0, 9.0], "work": [4.0]}}
    pooled = merge_stage_raw([a, b])
    assert pooled["decode"]["queue_wait"] == [1.0, 1.0, 9.0, 9.0]
    figures = stage_figures(pooled)
    assert set(figures) == {"decode"}
    assert figures["decode"]["queue_wait_ms"]["p50"] == 5.0
