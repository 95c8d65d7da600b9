"""loadtests/stack_sampler.py: busy threads are found where they are busy; waiting ones are idle."""

from __future__ import annotations

import threading
import time

from loadtests.stack_sampler import StackSampler, thread_group


def spin_in_a_known_place(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))


def test_the_busy_thread_is_on_top_and_the_waiting_ones_are_idle() -> None:
    stop = threading.Event()
    busy = threading.Thread(target=spin_in_a_known_place, args=(stop,), name="spinner-1")
    waiters = [threading.Thread(target=stop.wait, name=f"waiter-{i}") for i in range(3)]
    with StackSampler(interval_s=0.002) as sampler:
        for t in [busy, *waiters]:
            t.start()
        time.sleep(0.4)
        stop.set()
        for t in [busy, *waiters]:
            t.join()
    fig = sampler.figures()
    assert fig["samples"] > 50
    # threads other tests left behind (executors, consumers) may sample too: judge ours only
    ours = [t for t in fig["top"] if t["thread"] in ("spinner", "waiter")]
    assert ours[0]["thread"] == "spinner"
    assert "spin_in_a_known_place" in ours[0]["stack"]
    assert "tests/unit/test_stack_sampler.py" in ours[0]["stack"]
    assert fig["busy_threads"]["spinner"] > 0.5  # it ran (or wanted the GIL) most of the time
    assert fig["busy_threads"].get("waiter", 0.0) < 0.1  # three threads in Event.wait: idle


def test_thread_groups_drop_the_numbers() -> None:
    assert thread_group("decode-pinned_3") == thread_group("decode-pinned_12") == "decode-pinned"
    assert thread_group("MainThread") == "MainThread"
