"""Atomic, durable file writes. Every file registrish creates goes through here:
written to a temporary file in the destination's directory (or a given tmp dir on
the same filesystem), fsynced, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=tmp_dir or directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(directory)


def link_or_copy(src: Path, dst: Path, *, tmp_dir: Path) -> None:
    """Atomically make `dst` the same content as `src`: a hardlink where the
    filesystem allows one, else a copy. Replaces `dst` if it exists."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".lnk-{secrets.token_hex(8)}"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            atomic_write_bytes(tmp, src.read_bytes(), tmp_dir=tmp_dir)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
