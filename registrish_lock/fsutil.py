"""Atomic, durable file writes. Every file registrish creates goes through here:
written to a temporary file in the destination's directory (or a given tmp dir on
the same filesystem), fsynced, then renamed into place."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


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


class DirSyncs:
    """Directories whose renames/links are made durable together: one fsync per directory
    per batch instead of one per file. A writer given a batch defers its directory fsync
    here; `flush()` must run before anything that depends on those names is written (sync
    flushes at the end of every phase, so a tag is never durable before what it reaches)."""

    def __init__(self) -> None:
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()  # blobs are committed from a thread pool

    def add(self, directory: Path) -> None:
        with self._lock:
            self._dirs.add(directory)

    def flush(self) -> None:
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for directory in sorted(dirs):
            fsync_dir(directory)


def sync_dir(directory: Path, batch: DirSyncs | None) -> None:
    """fsync `directory` now, or at the batch's next flush."""
    if batch is None:
        fsync_dir(directory)
    else:
        batch.add(directory)


@dataclass(frozen=True)
class FileStamp:
    """Which file (device, inode) in which state (size, mtime, ctime): a write or a
    replacement changes it (and ctime cannot be set back by `utime`). Compared to tell
    that a file is still the one a writer left."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class VerifiedFile:
    """A file whose bytes were hashed as they were written: `digest` and `size` describe
    it for as long as it still has `stamp` (taken after its last write and fsync)."""

    digest: str
    size: int
    stamp: FileStamp


def atomic_write_bytes(
    path: Path, data: bytes, *, tmp_dir: Path | None = None, batch: DirSyncs | None = None
) -> None:
    with atomic_writer(path, tmp_dir=tmp_dir, batch=batch) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, tmp_dir: Path | None = None, batch: DirSyncs | None = None
) -> Iterator[BinaryIO]:
    """A file written as it comes (never held whole) that replaces `path` when the block
    ends; an exception leaves `path` as it was."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=tmp_dir or directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    sync_dir(directory, batch)


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


_COPY_BLOCK = 1 << 20


def chunks_of(handle: BinaryIO) -> Iterator[bytes]:
    """A file's bytes from where it is to its end, a block at a time."""
    while block := handle.read(_COPY_BLOCK):
        yield block


def atomic_write_chunks(
    path: Path,
    chunks: Iterable[bytes],
    *,
    tmp_dir: Path | None = None,
    batch: DirSyncs | None = None,
    prefix: tuple[BinaryIO, int] | None = None,
) -> None:
    """`atomic_write_bytes` of the bytes `chunks` yield, written as they come (never
    joined), after the first `prefix[1]` bytes of the file `prefix[0]` (from where it
    is). An exception from `chunks` leaves `path` as it was."""
    with atomic_writer(path, tmp_dir=tmp_dir, batch=batch) as handle:
        if prefix is not None:
            _copy_head(*prefix, handle)
        for chunk in chunks:
            handle.write(chunk)


def _copy_head(source: BinaryIO, size: int, into: BinaryIO) -> None:
    """The next `size` bytes of `source` into `into`."""
    while size > 0:
        block = source.read(min(size, _COPY_BLOCK))
        if not block:
            raise OSError(f"{source.name}: shrank while it was read")
        into.write(block)
        size -= len(block)


def replace_if_changed(path: Path, chunks: Iterable[bytes], *, tmp_dir: Path | None = None) -> bool:
    """Make `path` hold the bytes `chunks` yield, unless it already holds exactly them:
    True when written (atomically, as `atomic_write_chunks`). Each chunk is compared with
    the file as it comes and nothing is held whole; a temporary file is opened at the
    first difference (the equal bytes before it copied from the file), so an unchanged
    file costs one read and is never rewritten (its stamp stays, as the sync record
    wants), a 21 MB host config no more memory than a chunk."""
    try:
        old = path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        atomic_write_chunks(path, chunks, tmp_dir=tmp_dir)
        return True
    with old:
        it = iter(chunks)
        matched = 0
        for chunk in it:
            if old.read(len(chunk)) != chunk:
                different = chunk
                break
            matched += len(chunk)
        else:
            if not old.read(1):
                return False  # same bytes, same length
            different = b""  # the file is longer
        old.seek(0)
        atomic_write_chunks(
            path,
            itertools.chain((different,), it),
            tmp_dir=tmp_dir,
            prefix=(old, matched),
        )
    return True
