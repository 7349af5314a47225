"""Download progress: rich bars on a terminal, plain log lines otherwise, nothing with -q.

All rich output lives here. Methods are called from download worker threads; rich's
Progress is thread-safe, and the plain variant only prints whole lines.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import TaskID

from .console import Console, human_bytes, human_rate


class Progress(Protocol):
    def start(self, *, blobs: int, total_bytes: int) -> None: ...
    def blob_started(self, digest: str, size: int, name: str, *, already: int = 0) -> None: ...
    def advance(self, digest: str, n: int) -> None: ...
    def blob_done(self, digest: str) -> None: ...
    def close(self) -> None: ...


class QuietProgress:
    def start(self, *, blobs: int, total_bytes: int) -> None:
        pass

    def blob_started(self, digest: str, size: int, name: str, *, already: int = 0) -> None:
        pass

    def advance(self, digest: str, n: int) -> None:
        pass

    def blob_done(self, digest: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Wording:
    """How a transfer is described: sync fetches blobs, publish uploads objects."""

    noun: str = "blobs"
    doing: str = "fetching"
    done: str = "fetched"
    #: Items are named `name@digest` (sync) or by `name` alone (publish: the key).
    with_digest: bool = True
    #: Items smaller than this get no bar of their own (the overall bar still counts them).
    bar_min: int = 0

    def label(self, name: str, digest: str) -> str:
        return f"{name}@{digest}" if self.with_digest else name


FETCH = Wording()
UPLOAD = Wording(
    noun="objects", doing="uploading", done="uploaded", with_digest=False, bar_min=4 << 20
)


class PlainProgress:
    """One line per finished item (logs, CI); a start line per item with -v."""

    def __init__(self, console: Console, wording: Wording = FETCH) -> None:
        self.console = console
        self.wording = wording
        self._lock = threading.Lock()
        self._sizes: dict[str, tuple[int, str]] = {}
        self._done = 0
        self._count = 0

    def start(self, *, blobs: int, total_bytes: int) -> None:
        self._count = blobs
        if blobs:
            w = self.wording
            self.console.info(f"{w.doing} {blobs} {w.noun} ({human_bytes(total_bytes)})")

    def blob_started(self, digest: str, size: int, name: str, *, already: int = 0) -> None:
        with self._lock:
            self._sizes[digest] = (size, name)
        resumed = f", resuming at {human_bytes(already)}" if already else ""
        label = self.wording.label(name, digest)
        self.console.debug(f"{self.wording.doing} {label} ({human_bytes(size)}{resumed})")

    def advance(self, digest: str, n: int) -> None:
        pass

    def blob_done(self, digest: str) -> None:
        with self._lock:  # held while printing: print() writes text and newline apart
            self._done += 1
            size, name = self._sizes.pop(digest, (0, "?"))
            label = self.wording.label(name, digest)
            self.console.info(
                f"[{self._done}/{self._count}] {self.wording.done} {label} ({human_bytes(size)})"
            )

    def close(self) -> None:
        pass


class RichProgress:
    """Overall bytes, one bar per blob in flight, rate and ETA (stderr)."""

    def __init__(self, console: Console, wording: Wording = FETCH) -> None:
        self.wording = wording
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBars

        self._bars = RichBars(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=RichConsole(file=console.err),
            transient=False,
        )
        self._overall: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def start(self, *, blobs: int, total_bytes: int) -> None:
        if not blobs:
            return
        self._bars.start()
        self._overall = self._bars.add_task(
            f"{self.wording.doing} {blobs} {self.wording.noun}", total=total_bytes
        )

    def blob_started(self, digest: str, size: int, name: str, *, already: int = 0) -> None:
        if size < self.wording.bar_min:
            return
        short = f"{name}@{digest[7:19]}" if self.wording.with_digest else name[-60:]
        label = f"  {short}" + (" (resumed)" if already else "")
        # bytes kept from an interrupted run arrive through advance() like new ones
        task = self._bars.add_task(label, total=size)
        with self._lock:
            self._tasks[digest] = task

    def advance(self, digest: str, n: int) -> None:
        with self._lock:
            task = self._tasks.get(digest)
        if task is not None:
            self._bars.advance(task, n)
        if self._overall is not None:
            self._bars.advance(self._overall, n)

    def blob_done(self, digest: str) -> None:
        with self._lock:
            task = self._tasks.pop(digest, None)
        if task is not None:
            self._bars.remove_task(task)

    def close(self) -> None:
        if self._overall is not None:
            self._bars.stop()


def make_progress(console: Console, wording: Wording = FETCH) -> Progress:
    if console.verbosity < 0 or console.json_mode:
        return QuietProgress()
    if console.is_terminal:
        return RichProgress(console, wording)
    return PlainProgress(console, wording)


@dataclass
class Stats:
    """What a sync did, for the summary line and --json."""

    fetched: int = 0
    fetched_bytes: int = 0
    reused: int = 0
    reused_bytes: int = 0
    manifests: int = 0
    tags: int = 0
    removed: int = 0
    fetch_seconds: float = 0.0
    seconds: float = 0.0
    upstream_requests: int = 0

    def summary(self) -> str:
        return (
            f"fetched {self.fetched} blobs ({human_bytes(self.fetched_bytes)}), "
            f"reused {self.reused} ({human_bytes(self.reused_bytes)}); "
            f"wrote {self.manifests} manifests, {self.tags} tags; "
            f"{self.upstream_requests} upstream requests; "
            f"{self.seconds:.1f}s ("
            f"{human_rate(self.fetched_bytes, self.fetch_seconds)})"
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "fetched_blobs": self.fetched,
            "fetched_bytes": self.fetched_bytes,
            "reused_blobs": self.reused,
            "reused_bytes": self.reused_bytes,
            "manifests_written": self.manifests,
            "tags_written": self.tags,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
            "upstream_requests": self.upstream_requests,
        }


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started
