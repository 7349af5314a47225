"""The tree-store seam: what `apply` (sync), `gc` and the commands need from the place a
tree lives, so the same plan can be applied to a local directory (`LocalTreeStore`,
served by nginx/Caddy/Apache/`serve` or uploaded by `publish`) or to an S3-compatible
bucket (`bucket.store.BucketStore`, written directly by `sync`).

Paths are the tree's relative paths (`v2/<name>/manifests/<ref>` …, see `layout`). A store
keeps the consistency order `apply` drives: everything written before `flush()` is there
(durable, visible) before anything written after it, so a puller never sees a name whose
content is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..fsutil import DirSyncs, VerifiedFile
from ..upstream.sink import BlobDest
from . import gc as gc_mod
from . import record
from .layout import Layout
from .state import (
    TreeState,
    commit_blob,
    ensure_dirs,
    link_blob,
    partial_path,
    remove_file,
    scan,
    write_doc,
    write_manifest,
)

if TYPE_CHECKING:
    from .plan import BlobFetch

#: Streams one verified blob into the destination it is given (a file to resume, or a
#: sink opener); returns what it verified when it can tell (`commit_blob` trusts that).
Fetcher = Callable[[BlobDest], VerifiedFile | None]


class TreeStore(Protocol):
    """Observe the tree, write a document or manifest atomically, place a blob from a
    verified source, remove; `flush` ends a phase of `apply`'s consistency order."""

    #: Whether blobs also live in a content store beside the tree (gc sweeps it); a
    #: bucket has only its `v2/.../blobs/` keys.
    has_content_store: bool

    @property
    def label(self) -> str:
        """Where the tree lives, for messages (a directory, or `s3://bucket/prefix`)."""
        ...

    def observe(self, *, verify: bool = False, names: frozenset[str] | None = None) -> TreeState:
        """The tree as it is; with `names`, only those repositories are read (the sync
        record vouches for the rest; a store may read everything anyway)."""
        ...

    def prepare(self) -> None:
        """Before the first write (create directories, check the filesystem …)."""
        ...

    def resumable_bytes(self, digest: str) -> int:
        """Bytes of `digest` an interrupted run left that the next download keeps."""
        ...

    def place_blob(self, item: BlobFetch, fetch: Fetcher) -> None:
        """Have `fetch` stream the blob into a destination of this store and make it the
        tree's copy of `item.digest` only once its size and digest are verified."""
        ...

    def drop_blob(self, digest: str) -> None:
        """Forget a stored copy found corrupt (it is fetched again)."""
        ...

    def link_blob(self, rel: str, digest: str) -> None: ...

    def write_manifest(
        self, rel: str, twin_rel: str, data: bytes, stale_twins: Iterable[str] = ()
    ) -> None: ...

    def write_doc(self, rel: str, data: bytes) -> None: ...

    def remove(self, rel: str) -> None: ...

    def flush(self) -> None: ...

    def sweep(self, plan: gc_mod.GcPlan) -> None:
        """Delete what a gc plan lists, in its order (listings rewritten first)."""
        ...


class LocalTreeStore:
    """The tree as a local directory (`layout.root`) with its content store beside it:
    blobs are hardlinked from the store, every write is a temp file renamed into place, and
    the directory fsyncs of a phase are batched (`DirSyncs`) until `flush()`."""

    has_content_store = True

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._batch = DirSyncs()

    @property
    def label(self) -> str:
        return str(self.layout.root)

    def observe(self, *, verify: bool = False, names: frozenset[str] | None = None) -> TreeState:
        return scan(self.layout, verify=verify, names=names)

    def prepare(self) -> None:
        ensure_dirs(self.layout)

    def resumable_bytes(self, digest: str) -> int:
        dest = partial_path(self.layout, digest)
        return dest.stat().st_size if dest.exists() else 0

    def place_blob(self, item: BlobFetch, fetch: Fetcher) -> None:
        dest: Path = partial_path(self.layout, item.digest)
        verified = fetch(dest)
        commit_blob(self.layout, dest, item.digest, item.size, verified=verified, batch=self._batch)

    def drop_blob(self, digest: str) -> None:
        remove_file(self.layout.store_blob(digest))

    def link_blob(self, rel: str, digest: str) -> None:
        link_blob(self.layout, rel, digest, batch=self._batch)

    def write_manifest(
        self, rel: str, twin_rel: str, data: bytes, stale_twins: Iterable[str] = ()
    ) -> None:
        write_manifest(self.layout, rel, twin_rel, data, stale_twins, batch=self._batch)

    def write_doc(self, rel: str, data: bytes) -> None:
        write_doc(self.layout, rel, data, batch=self._batch)

    def remove(self, rel: str) -> None:
        remove_file(self.layout.path(rel))

    def flush(self) -> None:
        self._batch.flush()

    def sweep(self, plan: gc_mod.GcPlan) -> None:
        if plan.pending:  # the sync record must not vouch for a tree being changed
            record.invalidate(self.layout)
        gc_mod.sweep(plan, self.layout)
