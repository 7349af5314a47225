"""One bounded thread pool for the per-tag work of `lock` and `outdated`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Skipped(Exception):
    """An item not started because another one failed."""


def map_parallel(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """`fn` over `items` on at most `jobs` threads; results in the order of `items`.

    After the first failure no further item starts, and once those running end the error
    of the first failing item (in order, so one fault gives one message) is raised: a run
    that met a rate limit or a missing tag stops instead of a request per remaining tag."""
    failed = threading.Event()

    def run(item: T) -> R:
        if failed.is_set():
            raise _Skipped
        try:
            return fn(item)
        except BaseException:
            failed.set()
            raise

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        futures = [pool.submit(run, item) for item in items]
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, _Skipped):
            raise error
    return [f.result() for f in futures]
