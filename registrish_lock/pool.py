"""Fail-fast parallel work: the one way sync and publish run a batch on a thread pool."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from typing import TypeVar

T = TypeVar("T")


def run_fail_fast(
    pool: Executor,
    work: Callable[[T], None],
    items: Iterable[T],
    *,
    on_done: Callable[[T], None] | None = None,
    on_extra_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Run `work(item)` for every item on `pool`. The first failure cancels what has not
    started and waits for what is running (a thread cannot be killed mid-write), then is
    raised; later failures go to `on_extra_error`. `on_done` sees every item that finished."""
    futures: dict[Future[None], T] = {pool.submit(work, item): item for item in items}
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:  # Ctrl-C: nothing queued may start once the caller unwinds
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
        if exc is not None:
            errors.append(exc)
        elif on_done is not None:
            on_done(item)
    if errors:
        for extra in errors[1:]:
            if on_extra_error is not None:
                on_extra_error(extra)
        raise errors[0]


def _cancel(futures: Iterable[Future[None]]) -> None:
    for future in futures:
        future.cancel()
