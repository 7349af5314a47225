"""Fail-fast parallel work: the one way lock, outdated, sync and publish run a batch on
threads. After the first failure no further item starts; what is running ends (a thread
cannot be stopped mid-write), then the error of the first failing item, in the items'
order, is raised: a run that met a rate limit or a broken upstream stops instead of
making a request per remaining item."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Skipped(Exception):
    """An item not started because another one failed."""


def run_fail_fast(
    pool: Executor,
    work: Callable[[T], None],
    items: Iterable[T],
    *,
    on_done: Callable[[T], None] | None = None,
    on_extra_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Run `work(item)` for every item on `pool`. The first failure cancels what is
    queued (and an item a worker picks up after it is skipped), waits for what is
    running, and is raised; later failures go to `on_extra_error`. `on_done` sees every
    item that finished."""
    failed = threading.Event()

    def guarded(item: T) -> None:
        if failed.is_set():
            raise _Skipped
        try:
            work(item)
        except BaseException:
            failed.set()
            raise

    futures: dict[Future[None], T] = {pool.submit(guarded, item): item for item in items}
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:  # Ctrl-C: nothing queued may start once the caller unwinds
        failed.set()
        _cancel(futures)
        raise
    if any(f.exception() is not None for f in done):
        _cancel(futures)
    wait(futures)
    errors: list[BaseException] = []
    for future, item in futures.items():
        if future.cancelled():
            continue
        exc = future.exception()
        if exc is None:
            if on_done is not None:
                on_done(item)
        elif not isinstance(exc, _Skipped):
            errors.append(exc)
    if errors:
        for extra in errors[1:]:
            if on_extra_error is not None:
                on_extra_error(extra)
        raise errors[0]


def map_parallel(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """`fn` over `items` on at most `jobs` threads, failing fast as `run_fail_fast`;
    the results in the order of `items`."""
    if not items:
        return []
    results: dict[int, R] = {}

    def one(pair: tuple[int, T]) -> None:
        results[pair[0]] = fn(pair[1])

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        run_fail_fast(pool, one, list(enumerate(items)))
    return [results[i] for i in range(len(items))]


def background(fn: Callable[[], R], name: str) -> Future[R]:
    """`fn()` on a daemon thread of its own, its result (or exception) in the future: for
    reads whose wait overlaps the caller's work. Daemon: a run that fails meanwhile exits
    at once instead of waiting for a slow store (the thread's work is then dropped)."""
    done: Future[R] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # raised again by done.result()
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def _cancel(futures: Iterable[Future[None]]) -> None:
    for future in futures:
        future.cancel()


class Turnstile:
    """At most `slots` holders at once (`with turnstile:`), served in the order they came.
    A semaphore lets the thread that just released take the slot again for its next item,
    ahead of threads that waited for seconds; here a released slot passes straight to the
    longest waiter, so work queued largest first also starts largest first."""

    def __init__(self, slots: int) -> None:
        self._free = max(1, slots)
        self._waiting: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """How many threads wait for a slot."""
        with self._lock:
            return len(self._waiting)

    def __enter__(self) -> Turnstile:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # set by the holder that passes its slot on
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1
