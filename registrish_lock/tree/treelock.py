"""The tree's exclusive lock: one `sync`, `gc` or `publish` at a time per tree.

`fcntl.flock` on `<store>/lock`: the kernel releases it when the holder dies, even by
SIGKILL, so a stale lock file never blocks anyone. The holder writes its PID into the file
only so the waiting side can say who it waits for. A store left inside the root by an older
release is moved out first, under that store's own lock (`storemove`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..console import Console
from ..errors import BusyError
from .layout import Layout
from .storemove import legacy_store, move_legacy_store


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f"pid {text}"
    return "another process"


@contextlib.contextmanager
def tree_lock(layout: Layout, console: Console, *, wait: bool = True) -> Iterator[Path]:
    """Hold the tree's lock for the `with` block; wait for it (saying so) or, with
    `wait=False`, raise BusyError at once. Moves a store found inside the root out first."""
    old = legacy_store(layout)
    if old is not None:
        with _flocked(Layout(layout.root, old), console, wait=wait):
            move_legacy_store(old, layout.state, console)
    with _flocked(layout, console, wait=wait) as path:
        yield path


@contextlib.contextmanager
def _flocked(layout: Layout, console: Console, *, wait: bool) -> Iterator[Path]:
    path = layout.lock_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise BusyError(
                    f"{layout.root}: the tree is locked by {holder} ({path})",
                    hint="wait for it to finish, or rerun without --no-wait to queue",
                ) from None
            console.info(f"waiting for {holder} to release {path} …")
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        if held:  # never erase another holder's PID
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock
