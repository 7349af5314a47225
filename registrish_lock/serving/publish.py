"""`registrish publish`: mirror the tree into S3-compatible object storage.

Three steps, pip-tools style: observe (the tree through its `LocalTreeStore` → the pure
`objects_in_tree` → `LocalObject`s; list the bucket once → `RemoteObject`s), plan (pure:
`plan_publish` → `PublishPlan`), execute (uploads phase by phase, then deletes). The
bucket is reached only through the `Store` protocol: in production the bucket tree's own
client, `bucket.client.Boto3Store` (the same requests, retries, User-Agent and verified
multipart upload `sync` uses for a bucket root), a wrapper or fake in tests.

Metadata (Content-Type, Cache-Control) is not in a listing: after changing
`tag_cache_seconds`, or to repair objects uploaded by another tool, use `--force`.

Order never exposes a reference before its content: blobs → manifests by digest →
referrers → tag manifests → tag lists → catalog → ping, each phase finished before the
next starts; `--delete` runs last, in the reverse order (tags go before what they name).
A blob several repositories share is uploaded once: its other keys are copied inside the
bucket after the blob uploads end (a copy never starts before its source is complete).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..bucket.client import DEFAULT_JOBS, RemoteObject, file_mismatch
from ..bucket.target import S3Target
from ..console import Console, human_bytes, human_rate
from ..errors import LocalError
from ..oci.manifest import sha256_digest
from ..pool import run_fail_fast
from ..progress import Progress, Stopwatch
from ..tree.layout import Layout
from ..tree.store import LocalTreeStore
from .publish_plan import (
    Copy,
    LocalObject,
    Phase,
    PublishPlan,
    TreeError,
    objects_in_tree,
    plan_publish,
)
from .routes import BROWSE_DATA_DIR, BROWSE_REL, Policy

#: Digest-addressed objects up to this size (and every mutable one) are read into memory
#: and sent with one PUT and a Content-MD5; larger ones stream through `Store.put_file`.
SINGLE_PUT_MAX = 1024 * 1024
_CHUNK = 1 << 20


class Store(Protocol):
    """What publish needs from an S3 bucket. Keys here are full keys (prefix included)."""

    def list_objects(self, prefix: str) -> Iterator[RemoteObject]: ...

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, sha256: str
    ) -> None: ...

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        cache_control: str,
        sha256: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """Upload the file; it becomes visible only if its bytes hash to `sha256`."""
        ...

    def copy(
        self,
        source: str,
        key: str,
        *,
        size: int,
        content_type: str,
        cache_control: str,
        sha256: str,
    ) -> None:
        """Copy the complete object `source` to `key` inside the bucket, with these headers
        and `sha256` metadata (what an upload of the same bytes gets)."""
        ...

    def delete(self, keys: Sequence[str]) -> None: ...


def list_remote(store: Store, target: S3Target) -> dict[str, RemoteObject]:
    """The bucket's objects under the prefix, keyed relative to it."""
    prefix = target.list_prefix
    result = {}
    for obj in store.list_objects(prefix):
        if not obj.key.startswith(prefix) or obj.key == prefix:
            continue
        rel = obj.key[len(prefix) :]
        result[rel] = RemoteObject(rel, obj.size, obj.etag)
    return result


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _browse_files(layout: Layout) -> dict[str, int]:
    """The browse page (`index.html` at the root) and its `browse/` data files: rel →
    size, regular files only (never a symlink out of the tree)."""
    found = {}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        st = os.lstat(layout.path(BROWSE_REL))
        if stat.S_ISREG(st.st_mode):
            found[BROWSE_REL] = st.st_size
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(layout.path(BROWSE_DATA_DIR)):
            if entry.is_file(follow_symlinks=False):
                found[f"{BROWSE_DATA_DIR}/{entry.name}"] = entry.stat(follow_symlinks=False).st_size
    return found


def collect_objects(
    layout: Layout, policy: Policy, console: Console | None = None
) -> list[LocalObject]:
    """The tree's objects to upload (see `objects_in_tree`), observed through the tree
    store `sync` writes with (one walk: sizes, inodes and the bytes of every manifest and
    small document); only a mutable file too big to be held there is read again, for
    its MD5. Raises TreeError when there is no tree."""
    if not layout.v2.is_dir():
        raise TreeError(f"{layout.v2}: no tree to publish", hint="run `registrish sync` first")
    state = LocalTreeStore(layout).observe()

    def md5_of(rel: str) -> str:
        data = state.docs.get(rel)
        if data is None and rel in state.manifest_digests:
            data = state.manifest_bytes.get(state.manifest_digests[rel])
        if data is None:
            return _md5_file(layout.path(rel))
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def on_skip(rel: str) -> None:
        if console is not None:
            console.debug(f"publish: skipping {rel} (not a registry path)")

    return objects_in_tree(layout, state, _browse_files(layout), policy, md5_of, on_skip)


@dataclass
class PublishStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    unchanged: int = 0
    unchanged_bytes: int = 0
    deleted: int = 0
    upload_seconds: float = 0.0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_upload(self, size: int) -> None:
        with self._lock:
            self.uploaded += 1
            self.uploaded_bytes += size

    def count_copy(self, size: int) -> None:
        with self._lock:
            self.copied += 1
            self.copied_bytes += size

    def summary(self) -> str:
        return (
            f"uploaded {self.uploaded} objects ({human_bytes(self.uploaded_bytes)}), "
            + (
                f"copied {self.copied} in the bucket ({human_bytes(self.copied_bytes)}), "
                if self.copied
                else ""
            )
            + f"{self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)}); "
            f"deleted {self.deleted}; {self.seconds:.1f}s ("
            f"{human_rate(self.uploaded_bytes, self.upload_seconds)})"
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "copied": self.copied,
            "copied_bytes": self.copied_bytes,
            "unchanged": self.unchanged,
            "unchanged_bytes": self.unchanged_bytes,
            "deleted": self.deleted,
            "seconds": round(self.seconds, 3),
        }


def _upload(
    store: Store, target: S3Target, layout: Layout, obj: LocalObject, progress: Progress
) -> None:
    path = layout.path(obj.source)
    key = target.key(obj.key)
    headers = {"content_type": obj.content_type, "cache_control": obj.cache_control}
    try:
        if obj.digest is None or obj.size <= SINGLE_PUT_MAX:
            # a mutable object goes up in one PUT whatever its size: its ETag stays the MD5
            # the next run compares
            data = path.read_bytes()
            digest = sha256_digest(data)
            if obj.digest is not None and (digest, len(data)) != (obj.digest, obj.size):
                raise file_mismatch(path, len(data), digest)
            progress.blob_started(key, len(data), obj.key)
            store.put_bytes(key, data, sha256=digest, **headers)
            progress.advance(key, len(data))
        else:
            # verified as it streams: nothing is visible unless the bytes sent match the name
            progress.blob_started(key, obj.size, obj.key)
            on_bytes = lambda n: progress.advance(key, n)  # noqa: E731
            store.put_file(key, path, sha256=obj.digest, on_bytes=on_bytes, **headers)
    except FileNotFoundError:
        raise LocalError(
            f"{path}: vanished while publishing", hint="is another process changing the tree?"
        ) from None
    progress.blob_done(key)


def _copy(store: Store, target: S3Target, copy: Copy) -> None:
    obj = copy.obj
    assert obj.digest is not None  # only blobs are copied
    store.copy(
        target.key(copy.source),
        target.key(obj.key),
        size=obj.size,
        content_type=obj.content_type,
        cache_control=obj.cache_control,
        sha256=obj.digest,
    )


def execute_plan(
    plan: PublishPlan,
    *,
    target: S3Target,
    layout: Layout,
    store: Store,
    progress: Progress,
    jobs: int = DEFAULT_JOBS,
    stats: PublishStats | None = None,
) -> PublishStats:
    """Upload phase by phase (parallel within a phase), the copies right after the blob
    uploads, then delete. The first failure stops the run after in-flight requests end:
    a rerun plans from the bucket as it is."""
    stats = stats or PublishStats()
    clock = Stopwatch()
    progress.start(blobs=len(plan.uploads), total_bytes=plan.upload_bytes)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="publish") as pool:
            for phase, uploads in plan.phases():
                run_fail_fast(
                    pool,
                    lambda u: _upload(store, target, layout, u.obj, progress),
                    uploads,
                    on_done=lambda u: stats.count_upload(u.obj.size),
                )
                if phase == Phase.BLOBS:
                    run_fail_fast(
                        pool,
                        lambda c: _copy(store, target, c),
                        plan.copies,
                        on_done=lambda c: stats.count_copy(c.obj.size),
                    )
    finally:
        progress.close()
        stats.upload_seconds = clock.elapsed()
    if plan.deletes:
        # reverse phase order, batch by batch: a tag goes before what it names
        ordered = [target.key(d.key) for d in plan.deletes]
        store.delete(ordered)
        stats.deleted = len(ordered)
    return stats


@dataclass(frozen=True)
class PublishResult:
    plan: PublishPlan
    stats: PublishStats


def publish(
    *,
    layout: Layout,
    target: S3Target,
    store: Store,
    policy: Policy,
    console: Console,
    progress: Progress,
    jobs: int = DEFAULT_JOBS,
    delete: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> PublishResult:
    """Observe, plan and (unless `dry_run`) execute. The caller holds the tree lock."""
    clock = Stopwatch()
    local = collect_objects(layout, policy, console)
    remote = list_remote(store, target)
    plan = plan_publish(local, remote, delete=delete, force=force)
    stats = PublishStats(unchanged=plan.unchanged, unchanged_bytes=plan.unchanged_bytes)
    console.debug(
        f"publish: {len(local)} objects in the tree, {len(remote)} under {target}; "
        f"{len(plan.uploads)} to upload, {len(plan.copies)} to copy, "
        f"{len(plan.deletes)} to delete"
    )
    if not dry_run and plan.pending:
        execute_plan(
            plan,
            target=target,
            layout=layout,
            store=store,
            progress=progress,
            jobs=jobs,
            stats=stats,
        )
    stats.seconds = clock.elapsed()
    return PublishResult(plan, stats)
