"""Execute a `Plan` in the order that keeps the tree consistent for a puller, plus the
I/O around planning: gathering the manifests the planner needs (from the tree when
present, from the upstream otherwise) and the sync/gc entry points.

The upstream is reached only through the `Upstream` protocol (registry.RegistryClient
in production, a fake in tests) and only created when something must be fetched, so a
no-op sync makes zero requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from typing import TypeAlias

from ..console import Console
from ..errors import IntegrityError
from ..fsutil import VerifiedFile
from ..lock.lockfile import Lock, LockedTag
from ..oci.manifest import Manifest, parse_manifest
from ..oci.reference import Reference, parse_source
from ..pool import run_fail_fast
from ..progress import Progress, Stats, Stopwatch
from ..upstream.protocols import DEFAULT_JOBS, BlobRequest, LazyClient
from ..upstream.protocols import BlobSource as Upstream
from ..upstream.sink import BlobDest
from . import gc as gc_mod
from .desired import Desired, catalog_document, desired_tree, selected_children
from .layout import Layout
from .plan import BlobFetch, DocWrite, ManifestWrite, Plan, Removal, make_plan
from .state import TreeState
from .store import LocalTreeStore, TreeStore

#: The upstream of a sync, made on first use: a sync with nothing to fetch opens none.
LazyUpstream: TypeAlias = LazyClient[Upstream]


@dataclass(frozen=True)
class Manifests:
    """Manifests the lock reaches: digest → (exact bytes, parsed)."""

    data: Mapping[str, bytes] = field(default_factory=dict)
    parsed: Mapping[str, Manifest] = field(default_factory=dict)
    fetched: int = 0


def _parse(data: bytes, digest: str, media_type: str, where: str) -> Manifest:
    try:
        return parse_manifest(data, content_type=media_type, expected_digest=digest)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc.message}", hint=exc.hint) from None


def collect_manifests(
    lock: Lock,
    state: TreeState,
    upstream: LazyUpstream | None,
    console: Console,
    *,
    jobs: int = DEFAULT_JOBS,
) -> Manifests:
    """Every manifest the lock reaches: from the tree when present (its digest is the
    hash of its bytes), else from the upstream by digest (verified). With `upstream=None`
    (gc) missing ones are simply left out. The locked (top-level) manifests the tree
    lacks are fetched `jobs` at a time first; an index's children as the walk finds them."""
    data: dict[str, bytes] = {}
    parsed: dict[str, Manifest] = {}
    prefetched = _prefetch(lock, state, upstream, console, jobs) if upstream else {}
    fetched = len(prefetched)
    for tag in lock.tags:
        where = f"{tag.name}:{tag.tag}"
        repo: Reference | None = None
        stack: list[tuple[str, str, bool]] = [(tag.digest, tag.media_type, True)]
        # referrers are roots of their own: an artifact index is mirrored in full
        stack += [(r.digest, r.media_type, False) for r in tag.referrers]
        while stack:
            digest, media_type, top = stack.pop()
            if digest not in parsed:
                raw = state.manifest_bytes.get(digest) or prefetched.get(digest)
                if raw is None:
                    if upstream is None:
                        continue
                    repo = repo or _source(tag)
                    console.debug(f"GET manifest {repo}@{digest} for {where}")
                    raw = upstream.get().get_manifest(repo, digest, expected_digest=digest).data
                    fetched += 1
                data[digest] = raw
                parsed[digest] = _parse(raw, digest, media_type, where)
            stack.extend(
                (c.digest, c.media_type, False)
                for c in selected_children(tag, parsed[digest], top=top)
            )
    return Manifests(data=data, parsed=parsed, fetched=fetched)


def _source(tag: LockedTag) -> Reference:
    return parse_source(tag.source)


def _prefetch(
    lock: Lock, state: TreeState, upstream: LazyUpstream, console: Console, jobs: int
) -> dict[str, bytes]:
    """The locked manifests (tags and referrers) the tree lacks, by digest, fetched in
    parallel: a cold sync of many tags otherwise waits on one round trip per tag
    (BENCHMARKS.md, "Cold sync from a loopback docker-registry")."""
    wanted: dict[str, LockedTag] = {}
    for tag in lock.tags:
        for digest in (tag.digest, *(r.digest for r in tag.referrers)):
            if digest not in state.manifest_bytes:
                wanted.setdefault(digest, tag)
    got: dict[str, bytes] = {}

    def fetch(item: tuple[str, LockedTag]) -> None:
        digest, tag = item
        repo = _source(tag)
        console.debug(f"GET manifest {repo}@{digest} for {tag.name}:{tag.tag}")
        got[digest] = upstream.get().get_manifest(repo, digest, expected_digest=digest).data

    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="manifest") as pool:
            run_fail_fast(pool, fetch, wanted.items())
    return got


# --- applying a plan -----------------------------------------------------------------------


def _fetch_blobs(
    fetches: tuple[BlobFetch, ...],
    *,
    store: TreeStore,
    upstream: LazyUpstream,
    jobs: int,
    progress: Progress,
    console: Console,
    placed: Callable[[str], None] = lambda _digest: None,
) -> None:
    """Download in parallel: at most `jobs` at a time per upstream registry. Each blob
    streams into the store's destination (locally `<tmp>/<hex>.partial`, resumed after a
    crash), is verified, then becomes the tree's copy, and `placed(digest)` runs. On the
    first failure pending downloads are cancelled and it is raised once those in flight
    finish (finished blobs stay for the rerun)."""
    if not fetches:
        return
    repos = {f.digest: parse_source(f.source) for f in fetches}
    limits = {r.registry: threading.BoundedSemaphore(jobs) for r in repos.values()}
    progress.start(blobs=len(fetches), total_bytes=sum(f.size for f in fetches))

    def fetch_one(item: BlobFetch) -> None:
        repo = repos[item.digest]
        with limits[repo.registry]:
            already = store.resumable_bytes(item.digest)
            progress.blob_started(item.digest, item.size, item.name, already=already)
            fetched: list[bool] = []

            def fetch(dest: BlobDest) -> VerifiedFile | None:
                verified = upstream.get().fetch_blob(
                    BlobRequest(
                        repo,
                        item.digest,
                        item.size,
                        dest,
                        on_bytes=lambda n: progress.advance(item.digest, n),
                    )
                )
                fetched.append(True)
                return verified

            try:
                store.place_blob(item, fetch)
            except IntegrityError as exc:
                if not fetched:  # the upstream's own message already names the blob
                    raise
                raise IntegrityError(
                    f"{item.name} (from {item.source}): {exc.message}", hint=exc.hint
                ) from None
            placed(item.digest)
            progress.blob_done(item.digest)

    workers = max(1, min(jobs * len(limits), 64))
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            run_fail_fast(
                pool,
                fetch_one,
                _big_and_small(fetches),
                on_extra_error=lambda e: console.warn(str(e)),
            )
    finally:
        progress.close()


def _big_and_small(fetches: Sequence[BlobFetch]) -> list[BlobFetch]:
    """The largest blob, then the smallest, then the next largest, ...: the big downloads
    start first (the last to end is a small one, not a big one started late), and the
    small ones, a round trip each, go while the big ones stream instead of after them."""
    by_size = sorted(fetches, key=lambda f: -f.size)
    half = (len(by_size) + 1) // 2
    big, small = by_size[:half], by_size[half:][::-1]
    return [f for pair in zip_longest(big, small) for f in pair if f is not None]


@dataclass(frozen=True)
class Run:
    """What the steps of one sync share: the tree it writes, where blobs come from, how
    many requests at a time, and where it reports."""

    store: TreeStore
    upstream: LazyUpstream
    jobs: int
    progress: Progress
    console: Console


def apply_plan(plan: Plan, manifests: Mapping[str, bytes], run: Run, stats: Stats) -> None:
    """Blobs → platform manifests → indexes → referrers → tags → tags/list → stale tags
    → catalog → ping. A tag is written only after everything it reaches is in place.

    Durability: each phase ends with `store.flush()`, which makes what it wrote durable
    before the next phase writes names that refer to it (locally one fsync per directory,
    so after a power loss a tag never points at a blob or manifest that was lost; per-file
    directory fsyncs were 17 % of a small cold sync's profile)."""
    store, upstream, jobs, progress, console = (
        run.store,
        run.upstream,
        run.jobs,
        run.progress,
        run.console,
    )
    store.prepare()
    for digest in plan.drop_store:
        console.warn(f"stored blob {digest} is corrupt; fetching it again")
        store.drop_blob(digest)
    for foreign in plan.foreign:
        console.debug(
            f"not fetching non-distributable layer {foreign.digest} of {foreign.name} "
            f"(clients fetch it from {', '.join(foreign.urls) or 'its urls'})"
        )
    # A blob's other names (hard links locally, server-side copies in a bucket) are made
    # as soon as it is in place, while the other blobs download: a bucket's copies cost the
    # store's time, which a sync waiting on the network leaves idle. All before a manifest.
    links: dict[str, list[str]] = {}
    for want in plan.links:
        links.setdefault(want.digest, []).append(want.rel)

    def name_blob(digest: str) -> None:
        for rel in links.get(digest, ()):
            store.link_blob(rel, digest)

    fetched = {f.digest for f in plan.fetches}
    for digest in sorted(links.keys() - fetched):  # already in the store
        name_blob(digest)
    watch = Stopwatch()
    _fetch_blobs(
        plan.fetches,
        store=store,
        upstream=upstream,
        jobs=jobs,
        progress=progress,
        console=console,
        placed=name_blob,
    )
    store.flush()
    stats.fetch_seconds = watch.elapsed()
    stats.fetched, stats.fetched_bytes = len(plan.fetches), plan.fetch_bytes
    stats.reused, stats.reused_bytes = plan.reused_blobs, plan.reused_bytes

    def write_manifests(writes: Sequence[ManifestWrite]) -> None:
        for write in writes:
            w = write.want
            console.debug(f"{write.action} {w.rel} ({w.kind})")
            store.write_manifest(w.rel, w.twin, manifests[w.digest], write.stale_twins)
        store.flush()

    def write_docs(docs: Sequence[DocWrite]) -> None:
        for doc in docs:
            store.write_doc(doc.rel, doc.data)
        store.flush()

    # Manifests by digest (leaves first) are reachable from no tag until the tags phase;
    # referrers go before the tags so a freshly published tag's signatures are there.
    write_manifests(plan.manifests)
    write_docs(plan.referrers)
    write_manifests(plan.tags)
    stats.manifests, stats.tags = len(plan.manifests), len(plan.tags)
    write_docs(plan.tag_lists)
    for removal in plan.removals:
        console.debug(f"remove {removal.what} {removal.rel}")
        store.remove(removal.rel)
    stats.removed = len(plan.removals)
    for last in (plan.catalog, plan.ping):
        if last is not None:
            store.write_doc(last.rel, last.data)
    store.flush()


# --- entry points --------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncResult:
    plan: Plan
    stats: Stats
    gc: gc_mod.GcPlan | None = None
    #: The tree holds nothing the lock does not reach (what the sync record calls clean).
    clean: bool = False
    #: Something was written (`batched` returns an empty `plan` unless asked for JSON).
    changed: bool = False


@dataclass(frozen=True)
class _Planned:
    plan: Plan
    manifests: Manifests
    desired: Desired
    state: TreeState


def _plan_sync(lock: Lock, run: Run, *, verify: bool, scope: frozenset[str] | None) -> _Planned:
    """With `scope`, only those repositories are read and planned (the others are as the
    sync record vouches); the catalog still lists every locked name."""
    state = run.store.observe(verify=verify, names=scope)
    part = (
        lock
        if scope is None
        else replace(lock, tags=tuple(t for t in lock.tags if t.name in scope))
    )
    manifests = collect_manifests(part, state, run.upstream, run.console, jobs=run.jobs)
    desired = desired_tree(part, manifests.parsed)
    if scope is not None:
        catalog = ("catalog", catalog_document(lock))
        desired = replace(desired, docs={**desired.docs, Layout.rel_catalog(): catalog})
    return _Planned(make_plan(desired, state), manifests, desired, state)


def _store(tree: Layout | TreeStore) -> TreeStore:
    """A store as given, or the local directory a layout describes."""
    return LocalTreeStore(tree) if isinstance(tree, Layout) else tree


def sync_tree(
    *,
    lock: Lock,
    layout: Layout | TreeStore,
    upstream: LazyUpstream,
    console: Console,
    progress: Progress,
    jobs: int = DEFAULT_JOBS,
    verify: bool = False,
    dry_run: bool = False,
    prune: bool = False,
    scope: frozenset[str] | None = None,
) -> SyncResult:
    """Reconcile the tree (a store, or the local one at a layout) with `lock`; the caller
    holds the tree lock (or the bucket's lease). `scope`: the repositories that may differ
    from the lock (`delta.changed_names`); None = all."""
    tree = _store(layout)
    watch = Stopwatch()
    stats = Stats()
    if verify or prune:
        scope = None
    run = Run(store=tree, upstream=upstream, jobs=jobs, progress=progress, console=console)
    planned = _plan_sync(lock, run, verify=verify, scope=scope)
    plan, manifests = planned.plan, planned.manifests
    gc_plan = None
    if not dry_run:
        apply_plan(plan, manifests.data, run, stats)
    if prune and dry_run:
        gc_plan = _gc_after(plan, lock=lock, store=tree, manifests=manifests)
    elif prune:
        gc_plan = collect_garbage(lock=lock, layout=tree, console=console, dry_run=False)
    # What gc would find now: the scan's files the lock does not reach, minus what the
    # plan removed (everything the plan wrote is reached). Pure: no second scan.
    clean = not dry_run and (
        prune
        or (
            scope is None
            and not _garbage_after(plan, gc_mod.plan_gc(planned.desired, planned.state))
        )
    )
    stats.seconds = watch.elapsed()
    stats.upstream_requests = upstream.request_count
    return SyncResult(plan=plan, stats=stats, gc=gc_plan, clean=clean)


def collect_garbage(
    *,
    lock: Lock,
    layout: Layout | TreeStore,
    console: Console,
    dry_run: bool,
) -> gc_mod.GcPlan:
    """Mark from the lock using manifests in the tree only (no network), then sweep."""
    tree = _store(layout)
    state = _gc_state(tree)
    manifests = collect_manifests(lock, state, None, console)
    desired: Desired = desired_tree(lock, manifests.parsed, strict=False)
    plan = gc_mod.plan_gc(desired, state)
    if not dry_run:
        tree.sweep(plan)
    return plan


def _gc_state(tree: TreeStore) -> TreeState:
    """What gc marks against: a tree without a content store has no store blobs to sweep
    (its blob keys are swept as files)."""
    state = tree.observe()
    return state if tree.has_content_store else replace(state, store={})


def _gc_after(plan: Plan, *, lock: Lock, store: TreeStore, manifests: Manifests) -> gc_mod.GcPlan:
    """What `--prune` would sweep once `plan` is applied, for a dry run: marked with the
    manifests the plan fetched (a repository whose new manifest is not in the tree yet is
    not "unknown" then), and without the files the plan itself removes."""
    desired = desired_tree(lock, manifests.parsed, strict=False)
    gc_plan = gc_mod.plan_gc(desired, _gc_state(store))
    return replace(gc_plan, sweeps=_garbage_after(plan, gc_plan))


def _garbage_after(plan: Plan, gc_plan: gc_mod.GcPlan) -> tuple[Removal, ...]:
    """`gc_plan`'s sweeps that `plan` does not remove itself."""
    removed = {r.rel for r in plan.removals}
    return tuple(s for s in gc_plan.sweeps if s.rel not in removed)
