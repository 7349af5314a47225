"""`registrish publish`: mirror the tree into S3-compatible object storage.

Three steps, pip-tools style: observe (walk the tree → `LocalObject`s; list the bucket
once → `RemoteObject`s), plan (pure: `plan_publish` → `PublishPlan`), execute (uploads
phase by phase, then deletes). The bucket is reached only through the `Store` protocol:
`Boto3Store` in production (boto3 is the optional extra `registrish[s3]`, imported lazily),
a wrapper or fake in tests.

Observing and planning live in `publish_plan`, the bucket behind `Store` in `s3store`.
Metadata (Content-Type, Cache-Control) is not in a listing: after changing
`tag_cache_seconds`, or to repair objects uploaded by another tool, use `--force`.

Order never exposes a reference before its content: blobs → manifests by digest →
referrers → tag manifests → tag lists → catalog → ping, each phase finished before the
next starts; `--delete` runs last, in the reverse order (tags go before what they name).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..console import Console, human_bytes, human_rate
from ..errors import IntegrityError, LocalError
from ..oci.manifest import sha256_digest
from ..pool import run_fail_fast
from ..progress import Progress, Stopwatch
from ..tree.layout import Layout
from ..tree.state import hash_file
from .publish_plan import LocalObject, PublishPlan, collect_objects, plan_publish
from .routes import Policy
from .s3store import DEFAULT_JOBS, S3Target, Store, list_remote

#: Objects up to this size are read into memory and sent with one PUT and a Content-MD5.
SINGLE_PUT_MAX = 1024 * 1024


@dataclass
class PublishStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
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

    def summary(self) -> str:
        return (
            f"uploaded {self.uploaded} objects ({human_bytes(self.uploaded_bytes)}), "
            f"{self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)}); "
            f"deleted {self.deleted}; {self.seconds:.1f}s ("
            f"{human_rate(self.uploaded_bytes, self.upload_seconds)})"
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "unchanged": self.unchanged,
            "unchanged_bytes": self.unchanged_bytes,
            "deleted": self.deleted,
            "seconds": round(self.seconds, 3),
        }


def _verified_file_digest(path: Path, obj: LocalObject) -> str:
    """sha256 of the file; for a digest-addressed object it must be the name's digest."""
    digest, size = hash_file(path)
    if obj.digest is not None and (digest, size) != (obj.digest, obj.size):
        raise IntegrityError(
            f"{path}: {size} bytes hashing to {digest} do not match the name; not uploaded",
            hint="run `registrish sync --verify` to repair the tree, then publish again",
        )
    return digest


def _upload(
    store: Store, target: S3Target, layout: Layout, obj: LocalObject, progress: Progress
) -> None:
    path = layout.path(obj.source)
    key = target.key(obj.key)
    try:
        if obj.size <= SINGLE_PUT_MAX:
            data = path.read_bytes()
            digest = sha256_digest(data)
            if obj.digest is not None and (digest, len(data)) != (obj.digest, obj.size):
                _verified_file_digest(path, obj)  # raises with the full message
            progress.blob_started(key, len(data), obj.key)
            store.put_bytes(
                key,
                data,
                content_type=obj.content_type,
                cache_control=obj.cache_control,
                sha256=digest,
            )
            progress.advance(key, len(data))
        else:
            digest = _verified_file_digest(path, obj)
            progress.blob_started(key, obj.size, obj.key)
            store.put_file(
                key,
                path,
                content_type=obj.content_type,
                cache_control=obj.cache_control,
                sha256=digest,
                on_bytes=lambda n: progress.advance(key, n),
            )
    except FileNotFoundError:
        raise LocalError(
            f"{path}: vanished while publishing", hint="is another process changing the tree?"
        ) from None
    progress.blob_done(key)


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
    """Upload phase by phase (parallel within a phase), then delete. The first failure
    stops the run after in-flight uploads end: a rerun plans from the bucket as it is."""
    stats = stats or PublishStats()
    clock = Stopwatch()
    progress.start(blobs=len(plan.uploads), total_bytes=plan.upload_bytes)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="publish") as pool:
            for _phase, uploads in plan.phases():
                run_fail_fast(
                    pool,
                    lambda u: _upload(store, target, layout, u.obj, progress),
                    uploads,
                    on_done=lambda u: stats.count_upload(u.obj.size),
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
        f"{len(plan.uploads)} to upload, {len(plan.deletes)} to delete"
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
