"""Reading a local tree's files by relative path, fast: `check --local` opens tens of
thousands of small files, and building a `pathlib.Path` for each cost more than reading
it (Python 3.11's path parsing was half of the command's profile at 10,000 tags)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

from ..oci.manifest import MAX_MANIFEST_BYTES
from ..tree.layout import Layout

_CHUNK = 1 << 20
Inode = tuple[int, int]


class TreeFiles:
    """Files under one root, by the `/`-separated relative paths `Layout.rel_*` builds
    (validated names, tags and digests: nothing escapes the root). A file linked from
    several repositories is hashed once: they share its digest."""

    def __init__(self, layout: Layout) -> None:
        self.root = os.fspath(layout.root)
        self._digests: dict[Inode, str] = {}

    def abspath(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def inode(self, rel: str) -> Inode | None:
        try:
            st = os.stat(self.abspath(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_dev, st.st_ino

    def read(self, rel: str) -> bytes | None:
        """The bytes of a small file (a manifest or document), None when absent."""
        try:
            with open(self.abspath(rel), "rb") as handle:
                return _read_small(handle)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def digest(self, rel: str, *, keep: bool = False) -> tuple[str, Inode, bytes | None] | None:
        """(sha256 digest, inode, with `keep` the bytes of a small file) of a file; None
        when absent."""
        try:
            handle = open(self.abspath(rel), "rb")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with handle:
            st = os.fstat(handle.fileno())
            key = (st.st_dev, st.st_ino)
            # Only a file with more names than its store link and one tree path can be
            # met again (a blob shared by repositories): remembering every inode held a
            # digest per file of the tree (700,000 at 100,000 tags).
            shared = st.st_nlink > 2
            known = self._digests.get(key) if shared else None
            if known is not None and not keep:
                return known, key, None
            data = _read_small(handle)
            h = hashlib.sha256(data)
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
            digest = "sha256:" + h.hexdigest()
            if shared:
                self._digests[key] = digest
            return digest, key, data if keep and st.st_size <= MAX_MANIFEST_BYTES else None


def _read_small(handle: BinaryIO) -> bytes:
    """The whole file when it is small (one read of its size: a 4 MiB read buffer per
    file cost memory and time), else its first chunk."""
    size = os.fstat(handle.fileno()).st_size
    return handle.read(size + 1 if size <= MAX_MANIFEST_BYTES else _CHUNK)
