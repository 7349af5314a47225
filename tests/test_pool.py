"""The fail-fast pool that lock, outdated, sync and publish share: `run_fail_fast` and
`map_parallel` (bounded, ordered, stopping at the first failure)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import pytest

from registrish_lock.pool import Turnstile, map_parallel, run_fail_fast

P = ParamSpec("P")
R = TypeVar("R")


def test_every_item_runs_and_on_done_sees_each() -> None:
    seen: list[int] = []
    done: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        with lock:
            seen.append(n)

    with ThreadPoolExecutor(max_workers=3) as pool:
        run_fail_fast(pool, work, range(20), on_done=done.append)
    assert sorted(seen) == list(range(20)) and sorted(done) == list(range(20))


class ManualExecutor(Executor):
    """Queues what is submitted and runs it only when the test says: no scheduling races."""

    def __init__(self, expect: int) -> None:
        self.queue: list[tuple[Future[Any], Callable[[], Any]]] = []
        self.all_submitted = threading.Event()
        self._expect = expect

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        future: Future[R] = Future()
        self.queue.append((future, lambda: fn(*args, **kwargs)))
        if len(self.queue) == self._expect:
            self.all_submitted.set()
        return future

    def run(self, index: int) -> None:
        """What a pool's worker does with a queued item: run it unless it was cancelled."""
        future, call = self.queue[index]
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except Exception as exc:
                future.set_exception(exc)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "state not reached"
        time.sleep(0.01)


def test_first_failure_is_raised_and_queued_work_never_starts() -> None:
    executor = ManualExecutor(expect=10)
    started: list[int] = []
    raised: list[BaseException] = []

    def work(n: int) -> None:
        started.append(n)
        raise ValueError(f"boom {n}")

    def run() -> None:
        try:
            run_fail_fast(executor, work, range(10))
        except ValueError as exc:
            raised.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    assert executor.all_submitted.wait(timeout=60)
    executor.run(0)  # item 0 fails; the nine queued behind it must be cancelled
    wait_until(lambda: all(future.cancelled() for future, _ in executor.queue[1:]))
    for index in range(1, 10):
        executor.run(index)  # the pool's workers drain the queue: nothing may start
    caller.join(timeout=60)
    assert not caller.is_alive()
    assert [str(e) for e in raised] == ["boom 0"] and started == [0]


def test_later_failures_of_running_work_are_reported_not_lost() -> None:
    both_running = threading.Barrier(2)
    extra: list[str] = []

    def work(n: int) -> None:
        both_running.wait(timeout=30)  # both fail while the other is in flight
        raise RuntimeError(f"boom {n}")

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(RuntimeError) as raised:
        run_fail_fast(pool, work, [1, 2], on_extra_error=lambda e: extra.append(str(e)))
    assert sorted([str(raised.value), *extra]) == ["boom 1", "boom 2"]


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


def _poll(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state (the deadline only bounds a failure)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


def test_turnstile_serves_waiters_in_order_even_against_the_thread_that_released() -> None:
    """A released slot goes to the longest waiter: a holder that releases and asks again
    at once queues behind them (a semaphore would let it straight back in)."""
    gate = Turnstile(1)
    entered: list[str] = []
    holding, proceed = threading.Event(), threading.Event()

    def holder() -> None:
        with gate:
            entered.append("holder")
            holding.set()
            proceed.wait(30)
        with gate:
            entered.append("holder again")

    def waiter(name: str) -> None:
        with gate:
            entered.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(30)
    for n, name in enumerate(("w1", "w2", "w3"), start=1):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        _poll(functools.partial(lambda k: gate.waiting == k, n), f"{n} waiting")
    proceed.set()
    for t in threads:
        t.join(30)
    assert entered == ["holder", "w1", "w2", "w3", "holder again"]
    assert gate.waiting == 0


def test_turnstile_admits_at_most_its_slots() -> None:
    gate = Turnstile(3)
    inside = peak = 0
    lock = threading.Lock()
    go = threading.Event()

    def work(_: int) -> None:
        nonlocal inside, peak
        with gate:
            with lock:
                inside += 1
                peak = max(peak, inside)
            go.wait(30)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(work, i) for i in range(8)]
        _poll(lambda: gate.waiting == 5, "five waiting behind three holders")
        assert inside == 3
        go.set()
        for f in futures:
            f.result(30)
    assert peak == 3 and inside == 0 and gate.waiting == 0
