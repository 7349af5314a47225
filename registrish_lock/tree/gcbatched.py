"""gc of a large local tree, one batch of whole repositories at a time (as `batched` syncs).

`collect_garbage` scans the whole tree and marks the whole lock at once (942 MiB at
100,000 tags). Everything `plan_gc` decides about a file under `v2/` is keyed by its
repository, so each batch of `batched.batches` is scanned (its repositories' directories),
marked, planned and swept in `sweep`'s order (its tags lists rewritten first), then dropped.
Then the repositories the lock no longer names go (after the catalog stops listing them),
then the store blobs no batch reached and `<store>/tmp` leftovers: a tag never names
content already gone. The plan returned is the whole plan: the same sweeps (sorted as
`plan_gc` sorts them), rewrites, emptied repositories and bytes freed.

A batch finds a locked manifest only in its own repositories' files (the whole plan also
in any other's): a repository whose manifest is only elsewhere is kept whole as unknown.
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace

from ..console import Console
from ..lock.lockfile import Lock
from ..oci.reference import is_digest, is_name
from . import batched, record
from . import gc as gc_mod
from .apply import collect_garbage, collect_manifests
from .desired import Desired, desired_tree
from .layout import Layout, parse_rel_path
from .plan import Removal
from .state import MAX_DOC_BYTES, PARTIAL_SUFFIX, FileInfo, TreeState, scan

_INODE = struct.Struct("<QQ")


def collect_local_garbage(
    *, lock: Lock, layout: Layout, console: Console, dry_run: bool
) -> gc_mod.GcPlan:
    """`collect_garbage` on a local tree: in batches when the lock has more than
    `BATCH_TAGS` tags (read at call time, so tests can lower it)."""
    if len(lock.tags) <= batched.BATCH_TAGS:
        return collect_garbage(lock=lock, layout=layout, console=console, dry_run=dry_run)
    return _Batched(layout, console, dry_run=dry_run).run(lock)


class _Batched:
    def __init__(self, layout: Layout, console: Console, *, dry_run: bool) -> None:
        self.layout, self.console, self.dry_run = layout, console, dry_run
        self.sweeps: list[Removal] = []
        self.rewrites: list[tuple[str, tuple[str, bytes]]] = []  # (repository, rewrite)
        self.emptied: list[str] = []
        self.unknown: list[str] = []
        self.reached = bytearray()  # store digests the lock marks: 32 bytes each
        self.kept_blobs: set[str] = set()  # blob files of unknown repositories (rare)
        self.candidates: dict[tuple[int, int], int] = {}  # swept inodes → size
        self.surviving = bytearray()  # (dev, ino) of every file that stays: 16 bytes
        self.invalidated = False
        self.catalog: list[tuple[str, bytes]] = []

    def run(self, lock: Lock) -> gc_mod.GcPlan:
        for part in batched.batches(lock, None):
            names = frozenset(part.names())
            state = scan(self.layout, names=names)
            manifests = collect_manifests(part, state, None, self.console)
            desired = desired_tree(part, manifests.parsed, strict=False)
            self.reached += b"".join(
                bytes.fromhex(d.removeprefix("sha256:")) for d in desired.store
            )
            self._batch(desired, state, names)
            self.console.debug(f"gc: planned {len(names)} repositories ({len(part.tags)} tags)")
            del state, manifests, desired
        unlocked = batched._unlocked_repositories(self.layout, set(lock.names()))
        names = frozenset(n for n in unlocked if is_name(n))
        self._batch(Desired(), scan(self.layout, names=names), names, last=True)
        return self._store()

    def _batch(
        self,
        desired: Desired,
        state: TreeState,
        names: frozenset[str],
        *,
        last: bool = False,
    ) -> None:
        """Plan and sweep `names` (their store blobs are decided at the end); the `last`
        batch rewrites the catalog first (as the whole sweep does)."""
        plan = gc_mod.plan_gc(desired, replace(state, store={}, tmp={}))
        rewrites = tuple(r for r in plan.rewrites if r[0] != Layout.rel_catalog())
        swept = {s.rel for s in plan.sweeps}
        for rel, info in state.files.items():
            if rel in swept:
                self.candidates[(info.dev, info.ino)] = info.size
            else:
                self.surviving += _INODE.pack(info.dev, info.ino)
            parsed = parse_rel_path(rel)
            if parsed and parsed[0] in desired.unknown_repos and parsed[1] == "blobs":
                self.kept_blobs.add(parsed[2])
        self.sweeps += plan.sweeps
        self.rewrites += [(gc_mod._name_of(r[0]) or "", r) for r in rewrites]
        self.emptied += plan.emptied_repos
        self.unknown += plan.kept_unknown
        if last:  # the catalog stops naming emptied repositories before the last ones go
            self.catalog = gc_mod.catalog_rewrite(self._catalog(), self.emptied)
        self._sweep(replace(plan, rewrites=(*self.catalog, *rewrites)), names)

    def _sweep(self, plan: gc_mod.GcPlan, names: frozenset[str]) -> None:
        if self.dry_run or not plan.pending:
            return
        if not self.invalidated:  # the sync record must not vouch for a tree being changed
            record.invalidate(self.layout)
            self.invalidated = True
        gc_mod.sweep(plan, self.layout, names=names)

    def _catalog(self) -> bytes | None:
        path = self.layout.path(Layout.rel_catalog())
        try:
            if path.is_file() and path.stat().st_size <= MAX_DOC_BYTES:
                return path.read_bytes()
        except OSError:
            pass
        return None

    def _store(self) -> gc_mod.GcPlan:
        """The store blobs no batch reached, `<store>/tmp` leftovers; then the whole plan."""
        # Reached digests as 32-byte keys, and only the unreached blobs as `plan_gc`'s
        # store: a dict of every digest and every stored blob held ~180 MiB at 100,000 tags.
        reached = batched.reached_set(self.reached)
        del self.reached
        store: dict[str, FileInfo] = {}
        for entry in batched.stored_blobs(self.layout):
            st = entry.stat(follow_symlinks=False)
            if bytes.fromhex(entry.name) in reached:
                self.surviving += _INODE.pack(st.st_dev, st.st_ino)
            else:
                store[f"sha256:{entry.name}"] = FileInfo(st.st_size, st.st_dev, st.st_ino)
        tmp: dict[str, int] = {}
        if self.layout.tmp.is_dir():
            with os.scandir(self.layout.tmp) as leftovers:
                for entry in leftovers:
                    if entry.is_file(follow_symlinks=False):
                        tmp[entry.name] = entry.stat(follow_symlinks=False).st_size
        nothing = (0, "", "")  # `plan_gc` asks only whether a digest is marked
        partials = (name.removesuffix(PARTIAL_SUFFIX) for name in tmp)
        wanted = (f"sha256:{h}" for h in partials if _reached(h, reached))
        reached_store = dict.fromkeys(wanted, nothing)
        # `plan_gc` with the store alone: what it keeps is what some batch marked
        marked = Desired(store=reached_store)  # for the partial downloads it keeps
        last = gc_mod.plan_gc(marked, TreeState(store=store, tmp=tmp))
        # a blob file of an unknown repository keeps its store copy (not its partial)
        linked = {f"{gc_mod.STORE_LABEL}/blobs/sha256/{d[7:]}" for d in self.kept_blobs}
        last = replace(last, sweeps=tuple(s for s in last.sweeps if s.rel not in linked))
        swept = {s.rel for s in last.sweeps}
        for digest, info in store.items():
            rel = f"{gc_mod.STORE_LABEL}/blobs/sha256/{digest.removeprefix('sha256:')}"
            if rel in swept:
                self.candidates[(info.dev, info.ino)] = info.size
            else:
                self.surviving += _INODE.pack(info.dev, info.ino)
        self._sweep(last, frozenset())
        return self._whole(last)

    def _whole(self, last: gc_mod.GcPlan) -> gc_mod.GcPlan:
        """The batches' parts as `plan_gc` would have made them over the whole tree."""
        live = {_INODE.pack(*inode) for inode in self.candidates}
        if not live:
            self.surviving = bytearray()
        view = memoryview(self.surviving)
        survived = {
            view[i : i + 16].tobytes()
            for i in range(0, len(view), 16)
            if view[i : i + 16].tobytes() in live
        }
        freed = sum(
            size for inode, size in self.candidates.items() if _INODE.pack(*inode) not in survived
        )
        tmp_bytes = sum(s.size for s in last.sweeps if s.what == "temp file")
        self.rewrites.sort(key=lambda item: item[0])  # stable: a listing before its pages
        return gc_mod.GcPlan(
            sweeps=(*sorted(self.sweeps, key=lambda s: s.rel), *last.sweeps),
            emptied_repos=tuple(sorted(self.emptied)),
            bytes_freed=freed + tmp_bytes,
            kept_unknown=tuple(sorted(self.unknown)),
            rewrites=(*self.catalog, *(r for _, r in self.rewrites)),
        )


def _reached(hex_part: str, reached: set[bytes]) -> bool:
    """Whether a partial download's digest (its file name's hex) is one a batch marked."""
    return is_digest(f"sha256:{hex_part}") and bytes.fromhex(hex_part) in reached
