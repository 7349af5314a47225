"""SIGTERM and SIGINT as a readable pipe, for a server loop that must never lose one.

A Python signal handler runs in the main thread at whatever line it happens to be on.
`serve` used to raise KeyboardInterrupt from one: raised while the accept loop waited for
a new connection thread to start, it was turned into a ValueError by the cleanup on its
way out, which socketserver then logged as one failed request — and kept serving. Here
the C-level handler writes the signal's number to a pipe (`signal.set_wakeup_fd`), from
whichever thread the kernel picked; the loop watches that pipe beside its listening
socket, so a signal that came during start-up is seen as soon as the loop starts, and no
exception is ever raised at an arbitrary line.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While installed (`with`, from the main thread), SIGTERM and SIGINT only mark a stop
    request: `requested` says whether one came, `fileno()` becomes readable when one does."""

    def __init__(self) -> None:
        self._read = self._write = -1
        self._stopped = False
        self._previous_fd = -1
        self._previous: dict[signal.Signals, Any] = {}  # what signal.signal returned

    def __enter__(self) -> StopSignals:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        # The pipe first: a signal between the two calls still gets its default action.
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)

    def _note(self, _signum: int, _frame: FrameType | None) -> None:
        # Installed so that the C handler (and its write to the pipe) runs; it must not
        # raise: it may run in the middle of the accept loop's bookkeeping.
        self._stopped = True

    def fileno(self) -> int:
        return self._read

    @property
    def requested(self) -> bool:
        """Whether SIGTERM or SIGINT came since `__enter__` (never blocks)."""
        if not self._stopped:
            with contextlib.suppress(BlockingIOError):
                self._stopped = bool(os.read(self._read, 64))
        return self._stopped
