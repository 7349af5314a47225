"""`map_parallel`: bounded, ordered, and stopping at the first failure."""

from __future__ import annotations

import threading

import pytest

from registrish_lock.parallel import map_parallel


def test_results_keep_order_and_at_most_jobs_run_at_once() -> None:
    lock = threading.Lock()
    running = peak = 0
    two_in = threading.Barrier(2)

    def work(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        if n < 2:
            two_in.wait(10)  # the first two overlap: the pool really runs in parallel
        with lock:
            running -= 1
        return n * n

    assert map_parallel(work, list(range(40)), 3) == [n * n for n in range(40)]
    assert 2 <= peak <= 3


def test_the_first_failure_cancels_what_has_not_started() -> None:
    started: list[int] = []
    failed = threading.Event()

    def work(n: int) -> int:
        started.append(n)
        if n == 5:
            failed.set()
            raise ValueError(f"item {n}")
        if n > 5:
            assert failed.wait(10)
        return n

    with pytest.raises(ValueError, match="item 5"):
        map_parallel(work, list(range(1000)), 4)
    assert len(started) < 20  # not a request per remaining tag


def test_the_error_of_the_first_failing_item_in_order_wins() -> None:
    both = threading.Barrier(2)

    def work(n: int) -> int:
        both.wait(10)
        raise ValueError(f"item {n}")

    for _ in range(5):
        with pytest.raises(ValueError, match="item 0"):
            map_parallel(work, [0, 1], 2)
        both.reset()
