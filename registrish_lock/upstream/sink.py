"""One hashing sink for every blob that lands in the tree: a registry download (resumable,
in `blobs`) and a copy out of a local source (`local.copy_verified`) both write through
`HashingSink`, which hashes each chunk as it is written, refuses bytes past the declared
size, fsyncs before the result is trusted and deletes the file on a mismatch.

A blob's destination need not be a local file: an upstream's `fetch_blob` takes a
`BlobDest`, a path (a `HashingSink` over it, resumable) or a `SinkOpener` that makes any
`BlobSink` (the bucket tree streams into an S3 multipart upload that way, no local disk).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import IntegrityError
from ..fsutil import FileStamp, VerifiedFile
from ..oci.reference import Reference

_CHUNK = 1024 * 1024


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class BlobSink(Protocol):
    """What an upstream streams a blob into (`HashingSink`, `bucket.upload.BucketSink`):
    hashed as written, never past `size`; `finish()` is the commit, called only after the
    caller checked `digest` and `written`, and `discard()` leaves nothing behind."""

    what: str
    size: int
    written: int

    @property
    def digest(self) -> str: ...
    def write(self, chunk: bytes) -> None: ...
    def copy_from(
        self, src: Readable, limit: int | None = None, *, report: bool = True
    ) -> None: ...
    def restart(self) -> None: ...
    def finish(self) -> VerifiedFile | None: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


class SinkOpener(Protocol):
    """Makes the sink a blob streams into; `resume` asks to keep bytes an earlier run left
    (a sink that cannot, such as an upload, starts empty)."""

    def __call__(
        self, size: int, on_bytes: Callable[[int], None] | None, what: str, *, resume: bool
    ) -> BlobSink: ...


#: Where `fetch_blob` puts a blob: a local file (resumable) or a sink opener.
BlobDest = Path | SinkOpener


@dataclass(frozen=True)
class BlobRequest:
    """One blob for `fetch_blob`: where it lives, what it must be, and where it goes."""

    repo: Reference
    digest: str
    size: int
    dest: BlobDest
    #: Called for every chunk that lands in `dest`, for bytes kept from a previous run
    #: (once, up front), and with a negative count when a download restarts.
    on_bytes: Callable[[int], None] | None = None


def open_sink(blob: BlobRequest, what: str, *, resume: bool = False) -> BlobSink:
    """The sink `blob` streams into: a `HashingSink` over a path, else its opener's."""
    if isinstance(blob.dest, Path):
        return HashingSink(blob.dest, blob.size, blob.on_bytes, what, resume=resume)
    return blob.dest(blob.size, blob.on_bytes, what, resume=resume)


class HashingSink:
    """The file a blob streams into: hashed as it grows, never past `size`. With `resume`,
    bytes an interrupted run left in `dest` are hashed and kept (the download continues
    after them); without it `dest` starts empty."""

    def __init__(
        self,
        dest: Path,
        size: int,
        on_bytes: Callable[[int], None] | None,
        what: str,
        *,
        resume: bool = False,
    ) -> None:
        self.dest, self.size, self.what = dest, size, what
        self._on_bytes = on_bytes or (lambda _n: None)
        self.hasher = hashlib.sha256()
        self.written = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file = dest.open("ab" if resume else "wb")
        if resume:
            try:
                self._adopt_existing()
            except BaseException:
                self._file.close()
                raise

    def _adopt_existing(self) -> None:
        existing = os.fstat(self._file.fileno()).st_size
        if existing > self.size:
            self._file.truncate(0)
            return
        with self.dest.open("rb") as old:
            self.copy_from(old, existing, report=False)
        if self.written:
            self._on_bytes(self.written)

    def copy_from(self, src: Readable, limit: int | None = None, *, report: bool = True) -> None:
        """Hash `src` up to `limit` bytes in all (`size` by default); never reads past it."""
        end = self.size if limit is None else limit
        while self.written < end:
            chunk = src.read(min(_CHUNK, end - self.written))
            if not chunk:
                break
            if report:
                self.write(chunk)
            else:  # already in the file: only hashed
                self.hasher.update(chunk)
                self.written += len(chunk)

    def restart(self) -> None:
        """Discard everything (the server ignored our Range, or answered another one)."""
        self._file.truncate(0)
        self.hasher = hashlib.sha256()
        if self.written:
            self._on_bytes(-self.written)
        self.written = 0

    def write(self, chunk: bytes) -> None:
        # Only a download can overflow: `copy_from` never reads past `size`.
        if self.written + len(chunk) > self.size:
            raise IntegrityError(
                f"{self.what}: the registry sent more than the declared {self.size} bytes",
                hint="the manifest and the registry disagree; report it to the image's publisher",
            )
        self._file.write(chunk)
        self.hasher.update(chunk)
        self.written += len(chunk)
        self._on_bytes(len(chunk))

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def finish(self) -> VerifiedFile:
        """fsync and close; the stamp is taken from the handle that wrote every byte."""
        self._file.flush()
        os.fsync(self._file.fileno())
        stamp = FileStamp.of(os.fstat(self._file.fileno()))
        self._file.close()
        return VerifiedFile(self.digest, self.written, stamp)

    def discard(self) -> None:
        self._file.close()
        self.dest.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
