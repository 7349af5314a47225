"""All user-facing output goes through one `Console`: messages on stderr, results on
stdout, `-q` silences progress, `-v` adds debug detail, `--json` makes stdout a single
JSON document for scripts. Secrets never reach it: callers pass redacted values."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Console:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    json_mode: bool = False
    debug_mode: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    # `serve` logs from one thread per connection: each line is one locked write, or
    # print()'s separate message and newline writes interleave (`a b\n\n`).
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def _line(self, stream: TextIO, text: str) -> None:
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    @property
    def is_terminal(self) -> bool:
        return not self.json_mode and self.verbosity >= 0 and self.err.isatty()

    def info(self, message: str) -> None:
        """Progress and status lines (stderr); silenced by `-q`."""
        if self.verbosity >= 0:
            self._line(self.err, message)

    def debug(self, message: str) -> None:
        if self.verbosity >= 1 or self.debug_mode:
            self._line(self.err, f"debug: {message}")

    def warn(self, message: str) -> None:
        self._line(self.err, f"warning: {message}")

    def error(self, message: str, hint: str | None = None) -> None:
        self._line(self.err, f"error: {message}" + (f"\nhint: {hint}" if hint else ""))

    def result(self, text: str) -> None:
        """A human result line on stdout (suppressed in `--json` mode)."""
        if not self.json_mode:
            self._line(self.out, text)

    def emit_json(self, document: Any) -> None:
        if self.json_mode:
            json.dump(document, self.out, indent=2, sort_keys=True)
            self.out.write("\n")
            self.out.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_rate(nbytes: int, seconds: float) -> str:
    """`12.3 MiB/s` for the summaries of sync and publish (0 B/s when nothing was timed)."""
    return f"{human_bytes(nbytes / seconds if seconds > 0 else 0.0)}/s"
