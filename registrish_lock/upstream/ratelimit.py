"""Retry timing and registry rate limits: ``Retry-After``, backoff, and Docker Hub's
``ratelimit-limit`` / ``ratelimit-remaining`` headers.

Docker Hub counts every manifest ``GET`` as a pull (``HEAD`` is free) and answers a 429
``TOOMANYREQUESTS`` once a window's pulls are spent — often hours, often without
``Retry-After``. Sleeping through that helps nobody: such a 429 ends the run with the time to
retry. Shorter waits keep the usual handling (retry after ``Retry-After``, capped, or after a
backoff). The budget the headers announce (``100;w=21600``: 100 per 21,600 s) is shown at
``-v``, and a run that plans more manifest ``GET``\\ s than remain says so before it starts.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..console import Console
from ..errors import UpstreamError

#: Longest wait a 429 is retried after; a longer one ends the run (exit 3) saying when.
MAX_RATE_LIMIT_WAIT = 60.0
_QUOTA_RE = re.compile(r"\s*(\d+)\s*(?:;(?:.*?;)?\s*w\s*=\s*(\d+))?", re.IGNORECASE)
_LIMIT_HINT = (
    "log in for a higher limit, or configure a mirror (README: Docker Hub and rate limits)"
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0


DEFAULT_RETRY = RetryPolicy()


def backoff_delay(
    policy: RetryPolicy, failures: int, retry_after: float | None, rand: float
) -> float:
    """Seconds to wait after the `failures`-th failure (1-based): the server's
    ``Retry-After`` when given, else exponential with jitter ("equal jitter"); both capped."""
    if retry_after is not None:
        return max(0.0, min(retry_after, policy.max_delay))
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** (failures - 1))
    return ceiling / 2 + rand * ceiling / 2


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date; None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class Budget:
    """What ``ratelimit-limit`` / ``ratelimit-remaining`` announce."""

    remaining: int
    limit: int | None
    #: The window in seconds (``w=``), when given.
    window: float | None

    def describe(self) -> str:
        of = f" of {self.limit}" if self.limit is not None else ""
        per = f" (per {duration(self.window)})" if self.window else ""
        return f"{self.remaining}{of} manifest pulls left{per}"


def parse_quota(value: str | None) -> tuple[int, float | None] | None:
    """``100;w=21600`` → ``(100, 21600.0)``; ``100`` → ``(100, None)``; else None."""
    m = _QUOTA_RE.fullmatch(value or "")
    if m is None:
        return None
    return int(m.group(1)), float(m.group(2)) if m.group(2) else None


def budget_of(headers: Mapping[str, str]) -> Budget | None:
    remaining = parse_quota(headers.get("ratelimit-remaining"))
    if remaining is None:
        return None
    limit = parse_quota(headers.get("ratelimit-limit"))
    window = remaining[1] or (limit[1] if limit else None)
    return Budget(remaining[0], limit[0] if limit else None, window)


def duration(seconds: float) -> str:
    """``21600`` → ``6 h``; ``5400`` → ``1 h 30 min``; ``90`` → ``1 min 30 s``."""
    total = round(seconds)
    parts = [(total // 3600, "h"), (total % 3600 // 60, "min"), (total % 60, "s")]
    shown = [f"{n} {unit}" for n, unit in parts if n]
    return " ".join(shown[:2]) or "0 s"


def exhausted(
    host: str,
    headers: Mapping[str, str],
    what: str,
    detail: str,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> UpstreamError | None:
    """The error ending the run at a 429 not worth sleeping through: ``Retry-After`` beyond
    `MAX_RATE_LIMIT_WAIT`, or none and a rate-limit window longer than that. None: retry."""
    wait = parse_retry_after(headers.get("retry-after"))
    if wait is None:
        budget = budget_of(headers)
        window = budget.window if budget is not None else None
        if window is None or window <= MAX_RATE_LIMIT_WAIT:
            return None
        when = f"within {duration(window)} (by {_clock(now() + timedelta(seconds=window))})"
    elif wait <= MAX_RATE_LIMIT_WAIT:
        return None
    else:
        when = f"after {_clock(now() + timedelta(seconds=wait))} (in {duration(wait)})"
    code = detail.strip(" ()").split(":", 1)[0]  # `_error_detail`'s ` (CODE: message)`
    return UpstreamError(
        f"registry {host} is rate-limiting {what} (HTTP 429{' ' + code if code else ''}): "
        f"retry {when}",
        hint=_LIMIT_HINT,
    )


def _clock(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class RateLimits:
    """The last budget each registry announced, shown at ``-v`` when it changes, and the
    early warning when a run plans more manifest pulls than remain. Thread-safe."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        #: Pulls a run planned before the registry had announced its budget.
        self._planned: dict[str, int] = {}

    def observe(self, registry: str, headers: Mapping[str, str]) -> None:
        budget = budget_of(headers)
        if budget is None:
            return
        with self._lock:
            changed = self._budgets.get(registry) != budget
            self._budgets[registry] = budget
            planned = self._planned.pop(registry, None)
        if changed:
            self._console.debug(f"rate limit of {registry}: {budget.describe()}")
        if planned is not None:
            self._check(registry, planned, budget)

    def plan(self, registry: str, gets: int) -> None:
        """A run is about to make at least `gets` manifest ``GET``\\ s to `registry`."""
        with self._lock:
            budget = self._budgets.get(registry)
            if budget is None:
                self._planned[registry] = gets  # checked at the first announcement
                return
        self._check(registry, gets, budget)

    def _check(self, registry: str, gets: int, budget: Budget) -> None:
        if gets > budget.remaining:
            per = f" per {duration(budget.window)}" if budget.window else ""
            self._console.warn(
                f"this run needs {gets} manifest pulls from {registry}, which allows "
                f"{budget.remaining} more{per}: it will stop at the rate limit; {_LIMIT_HINT}"
            )
