"""A large sync of a local tree, one batch of whole repositories at a time.

`sync_tree` reads the tree, gathers every manifest, marks and plans everything at once:
~14 KiB of Python objects per tag (1 GiB at 100,000 tags). Everything it plans is keyed by
repository (tree paths, tag lists, referrers documents), so the same plan can be made and
applied per repository: each batch is scanned (its repositories' directories; the content
store is stat'ed blob by blob), its manifests collected, marked, planned and applied in
`apply_plan`'s order, then dropped. The catalog and the ping, which name every repository,
are written once after the last batch: a repository is listed only once it is complete.

What one pass over the whole tree gave besides the plan is rebuilt from the batches:
- the sync record's `clean` (gc would collect nothing): no batch left a file of its
  repositories that the lock does not reach, no file of another repository is under `v2/`,
  every stored blob is one some batch reached, and nothing is left in `<store>/tmp`;
- a blob declared with two sizes by two batches is fetched against the size of the second
  (the upstream's verification then fails it, as the whole plan's check would).

A repository is never split (its tag list and stale tags are decided over all its tags),
so a batch is as large as its largest repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace

from ..console import Console
from ..lock.lockfile import Lock
from ..oci.reference import is_digest, is_name
from ..progress import Progress, Stats, Stopwatch
from . import gc as gc_mod
from .apply import LazyUpstream, Run, SyncResult, apply_plan, collect_manifests
from .desired import PING_DOCUMENT, Desired, catalog_document, desired_tree
from .layout import REPOSITORY_SECTIONS, Layout, parse_rel_path
from .plan import DocWrite, Plan, make_plan
from .store import LocalTreeStore

#: Tags per batch (whole repositories): a lock of at most this many is synced in one.
#: A batch holds ~14 KiB per tag while it is planned and applied.
BATCH_TAGS = 1000
_LAST = ("catalog", "ping")


def batches(lock: Lock, scope: frozenset[str] | None) -> Iterator[Lock]:
    """The lock's repositories (those in `scope`), in order, grouped up to `BATCH_TAGS`."""
    group: list[Lock] = []
    count = 0
    for name, part in lock.by_repository():
        if scope is not None and name not in scope:
            continue
        if group and count + len(part.tags) > BATCH_TAGS:
            yield _joined(lock, group)
            group, count = [], 0
        group.append(part)
        count += len(part.tags)
    if group:
        yield _joined(lock, group)


def _joined(lock: Lock, parts: list[Lock]) -> Lock:
    return replace(lock, tags=tuple(t for p in parts for t in p.tags))


class _Plans:
    """The batches' plans: merged when the caller wants them whole (`--json`), else only
    whether any had something to do."""

    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.pending = False
        self._parts: list[Plan] = []

    def add(self, plan: Plan) -> None:
        self.pending = self.pending or plan.pending
        if self.keep:
            self._parts.append(plan)

    def plan(self) -> Plan:
        if not self._parts:
            return Plan()
        merged: dict[str, object] = {}
        for f in fields(Plan):
            values = [getattr(p, f.name) for p in self._parts]
            if f.name in _LAST:
                merged[f.name] = next((v for v in reversed(values) if v is not None), None)
            elif f.type == "int":
                merged[f.name] = sum(values)
            else:
                merged[f.name] = tuple(item for v in values for item in v)
        return Plan(**merged)  # type: ignore[arg-type]


def _add(total: Stats, part: Stats) -> None:
    for f in fields(Stats):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def sync_in_batches(
    *,
    lock: Lock,
    layout: Layout,
    upstream: LazyUpstream,
    console: Console,
    progress: Progress,
    jobs: int,
    scope: frozenset[str] | None = None,
) -> SyncResult:
    """`sync_tree` for a local tree, without `verify`, `prune` or `dry_run`."""
    store = LocalTreeStore(layout)
    watch, stats = Stopwatch(), Stats()
    plans = _Plans(keep=console.json_mode)
    reached = bytearray()  # every stored blob a batch needs: 32 bytes each (no object)
    clean = scope is None

    run = Run(store=store, upstream=upstream, jobs=jobs, progress=progress, console=console)

    def apply(plan: Plan, manifests: Mapping[str, bytes]) -> None:
        done = Stats()
        apply_plan(plan, manifests, run, done)
        _add(stats, done)
        plans.add(plan)

    for part in batches(lock, scope):
        names = frozenset(t.name for t in part.tags)
        state = store.observe(names=names)
        manifests = collect_manifests(part, state, upstream, console, jobs=jobs)
        desired = desired_tree(part, manifests.parsed)
        plan = make_plan(
            replace(desired, docs={k: v for k, v in desired.docs.items() if v[0] not in _LAST}),
            state,
        )
        apply(plan, manifests.data)
        reached += b"".join(bytes.fromhex(d.removeprefix("sha256:")) for d in desired.store)
        if clean:  # what gc would find in these repositories, minus what the plan removed
            garbage = gc_mod.plan_gc(desired, replace(state, store={}, tmp={})).sweeps
            removed = {r.rel for r in plan.removals}
            clean = all(s.rel in removed for s in garbage)
        console.debug(f"synced {len(names)} repositories ({len(part.tags)} tags)")
        del state, manifests, desired, plan  # not alive while the next batch is read
    # Repositories no longer locked lose their tag files (and `last` pages) as in a whole
    # sync; their content stays for gc.
    locked = set(lock.names())
    unlocked = _unlocked_repositories(layout, locked) if scope is None else set()
    gone = unlocked if scope is None else (set(scope) - locked)
    if gone:
        state = store.observe(names=frozenset(n for n in gone if is_name(n)))
        apply(make_plan(Desired(), state), {})
    last = _write_last(store, lock)
    plans.add(Plan(catalog=last[0], ping=last[1]))
    clean = clean and not unlocked and _nothing_else(layout, reached)
    stats.seconds = watch.elapsed()
    stats.upstream_requests = upstream.request_count
    return SyncResult(plan=plans.plan(), stats=stats, clean=clean, changed=plans.pending)


def _write_last(store: LocalTreeStore, lock: Lock) -> tuple[DocWrite | None, DocWrite | None]:
    """The catalog, then the ping, where they differ from the tree's."""
    written: list[DocWrite | None] = []
    for rel, section, data in (
        (Layout.rel_catalog(), "catalog", catalog_document(lock)),
        (Layout.rel_ping(), "ping", PING_DOCUMENT),
    ):
        try:
            with open(store.layout.path(rel), "rb") as handle:
                same = handle.read() == data
        except OSError:
            same = False
        written.append(None if same else DocWrite(rel, section, data))
        if not same:
            store.write_doc(rel, data)
    store.flush()
    return written[0], written[1]


def _unlocked_repositories(layout: Layout, locked: set[str]) -> set[str]:
    """The repositories with a file of ours under `v2/` that the lock does not name (the
    sections of locked ones are not listed: their batches read them)."""
    sections = {os.path.join(layout.repo_dir(n), s) for n in locked for s in REPOSITORY_SECTIONS}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(layout.v2):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in sections]
        for filename in filenames:
            rel = os.path.relpath(os.path.join(dirpath, filename), layout.root)
            parsed = parse_rel_path(rel.replace(os.sep, "/"))
            if parsed is not None:
                found.add(parsed[0])
    return found


def reached_set(digests: bytearray) -> set[bytes]:
    """The digests the batches reached (`digests`: 32 bytes each), as a set: made only
    once the batches' memory is free."""
    return {bytes(digests[i : i + 32]) for i in range(0, len(digests), 32)}


def stored_blobs(layout: Layout) -> Iterator[os.DirEntry[str]]:
    """The content store's blob files: entries named by a digest's hex that are regular
    files (anything else there is no stored blob, and gc ignores it too)."""
    store = layout.state / "blobs" / "sha256"
    if not store.is_dir():
        return
    with os.scandir(store) as entries:
        for entry in entries:
            if is_digest(f"sha256:{entry.name}") and entry.is_file(follow_symlinks=False):
                yield entry


def _nothing_else(layout: Layout, digests: bytearray) -> bool:
    """No stored blob no batch reached (`digests`: 32 bytes each), nothing in
    `<store>/tmp`: the rest of what gc would collect."""
    reached = reached_set(digests)
    if any(bytes.fromhex(entry.name) not in reached for entry in stored_blobs(layout)):
        return False
    if not layout.tmp.is_dir():
        return True
    with os.scandir(layout.tmp) as leftovers:
        return not any(True for _ in leftovers)
