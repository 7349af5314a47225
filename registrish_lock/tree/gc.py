"""Garbage collection: mark from the lock (`desired.desired_tree`), sweep the rest.

`plan_gc` is pure. It only proposes files registrish itself lays out (manifests, blobs,
referrers, tags/list under `v2/`, the content store, temp files), never one the lock
reaches. A repository whose locked manifests are missing from the tree cannot be marked
precisely, so its content is kept whole until a sync completes it. Partial downloads of
blobs the lock still needs are kept so the next sync resumes them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import human_bytes
from .desired import Desired
from .layout import Layout, is_last_page, parse_rel_path
from .plan import Removal
from .state import (
    PARTIAL_SUFFIX,
    FileInfo,
    TreeState,
    canonical_json,
    manifest_ref_of,
    remove_empty_dirs,
    remove_file,
    write_doc,
)

#: How a path in the content store is shown (`<store>/blobs/sha256/…`): the store is
#: outside the root, so its paths are not root-relative.
STORE_LABEL = "<store>"


@dataclass(frozen=True)
class GcPlan:
    sweeps: tuple[Removal, ...] = ()
    #: Repositories that end up with no files (their directories go too).
    emptied_repos: tuple[str, ...] = ()
    bytes_freed: int = 0
    kept_unknown: tuple[str, ...] = ()
    #: Listings rewritten (before the sweep) so they never name what goes: rel → bytes.
    rewrites: tuple[tuple[str, bytes], ...] = ()

    @property
    def pending(self) -> bool:
        return bool(self.sweeps or self.rewrites)

    def describe(self, *, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        lines = [f"{verb} {s.what} {s.rel}" for s in self.sweeps]
        lines += [f"{'would rewrite' if dry_run else 'rewrote'} {rel}" for rel, _ in self.rewrites]
        lines += [f"{verb} repository {name}" for name in self.emptied_repos]
        lines += [
            f"kept everything in {name}: a locked manifest is missing (run `registrish sync`)"
            for name in self.kept_unknown
        ]
        count = len(self.sweeps)
        lines.append(
            f"{'Would free' if dry_run else 'Freed'} {human_bytes(self.bytes_freed)} "
            f"({count} file{'s' if count != 1 else ''})"
        )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "remove": [{"path": s.rel, "what": s.what, "size": s.size} for s in self.sweeps],
            "emptied_repositories": list(self.emptied_repos),
            "bytes_freed": self.bytes_freed,
            "kept_unknown": list(self.kept_unknown),
            "rewrite": [rel for rel, _ in self.rewrites],
        }


def _what(section: str, ref: str) -> str:
    if section == "manifests":
        return "manifest" if ref.startswith("sha256:") else "tag"
    return {"blobs": "blob", "referrers": "referrers", "tags": "tags list"}.get(section, section)


def plan_gc(desired: Desired, state: TreeState) -> GcPlan:
    keep = desired.keep
    sweeps: list[Removal] = []
    repo_files: dict[str, int] = {}
    repo_kept: dict[str, int] = {}
    infos: dict[str, FileInfo] = {}
    for rel, info in sorted(state.files.items()):
        parsed = parse_rel_path(rel)
        if parsed is None:
            continue  # ping, catalog, or a file that is not ours
        name, section, ref = parsed
        repo_files[name] = repo_files.get(name, 0) + 1
        locked_tag = section == "manifests" and not ref.startswith("sha256:")
        if rel in keep or (name in desired.unknown_repos and not locked_tag):
            repo_kept[name] = repo_kept.get(name, 0) + 1
            continue
        sweeps.append(Removal(rel, _what(section, ref), info.size))
        infos[rel] = info

    # store blobs: kept when marked, or linked from an unknown repository's blob files
    kept_store = set(desired.store)
    for rel in state.files:
        parsed = parse_rel_path(rel)
        if parsed and parsed[0] in desired.unknown_repos and parsed[1] == "blobs":
            kept_store.add(parsed[2])
    for digest, info in sorted(state.store.items()):
        if digest not in kept_store:
            rel = f"{STORE_LABEL}/blobs/sha256/{digest.removeprefix('sha256:')}"
            sweeps.append(Removal(rel, "stored blob", info.size))
            infos[rel] = info
    for filename, size in sorted(state.tmp.items()):
        hex_part = filename.removesuffix(PARTIAL_SUFFIX)
        if filename.endswith(PARTIAL_SUFFIX) and f"sha256:{hex_part}" in desired.store:
            continue  # a resumable download of something still needed
        sweeps.append(Removal(f"{STORE_LABEL}/tmp/{filename}", "temp file", size))  # noqa: S108

    # bytes freed: an inode is freed only when none of its links survives
    swept = {s.rel for s in sweeps}
    surviving = {(i.dev, i.ino) for rel, i in state.files.items() if rel not in swept} | {
        (i.dev, i.ino) for d, i in state.store.items() if d in kept_store
    }
    freed: dict[tuple[int, int], int] = {}
    for info in infos.values():
        if (info.dev, info.ino) not in surviving:
            freed[(info.dev, info.ino)] = info.size
    tmp_bytes = sum(s.size for s in sweeps if s.what == "temp file")
    emptied = sorted(n for n, count in repo_files.items() if count and not repo_kept.get(n))
    rewrites = _listing_rewrites(state, sweeps, emptied)
    return GcPlan(
        sweeps=tuple(sweeps),
        emptied_repos=tuple(emptied),
        bytes_freed=sum(freed.values()) + tmp_bytes,
        kept_unknown=tuple(sorted(desired.unknown_repos)),
        rewrites=rewrites,
    )


def _listing_rewrites(
    state: TreeState, sweeps: list[Removal], emptied: list[str]
) -> tuple[tuple[str, bytes], ...]:
    """The catalog without emptied repositories, tags lists without swept tags. gc only
    subtracts: what a listing should add is sync's business."""
    rewrites = list(catalog_rewrite(state.docs.get(Layout.rel_catalog()), emptied))
    swept_tags: dict[str, set[str]] = {}
    for item in sweeps:
        parsed = manifest_ref_of(item.rel)
        if parsed is not None and not parsed[1].startswith("sha256:"):
            swept_tags.setdefault(parsed[0], set()).add(parsed[1])
    swept_rels = {s.rel for s in sweeps}
    for name, tags in sorted(swept_tags.items()):
        # the listing and its `last` pages (`tags/<tag>.~last`) that survive the sweep
        pages = sorted(r for r in state.docs if is_last_page(r) and _name_of(r) == name)
        for rel in (Layout.rel_tags_list(name), *pages):
            listing = _json(state.docs.get(rel))
            if rel in swept_rels or listing is None or not isinstance(listing.get("tags"), list):
                continue
            kept = [t for t in listing["tags"] if t not in tags]
            if kept != listing["tags"]:
                rewrites.append((rel, canonical_json({**listing, "tags": kept})))
    return tuple(rewrites)


def catalog_rewrite(data: bytes | None, emptied: Collection[str]) -> list[tuple[str, bytes]]:
    """The catalog (its bytes, `data`) without the emptied repositories, if it changes."""
    catalog = _json(data)
    if catalog is None or not isinstance(catalog.get("repositories"), list):
        return []
    names = [n for n in catalog["repositories"] if n not in emptied]
    if names == catalog["repositories"]:
        return []
    return [(Layout.rel_catalog(), canonical_json({**catalog, "repositories": names}))]


def _name_of(rel: str) -> str | None:
    parsed = parse_rel_path(rel)
    return parsed[0] if parsed is not None else None


def _json(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def sweep(plan: GcPlan, layout: Layout, names: Iterable[str] | None = None) -> list[Path]:
    """Delete what `plan` lists: tags first (no puller is sent to content about to go),
    then manifests, referrers, blobs, store blobs, temp files; then emptied directories
    (with `names`, only those repositories' and their parents': a batch's)."""
    order = {"tag": 0, "tags list": 1, "manifest": 2, "referrers": 3, "blob": 4}
    removed: list[Path] = []
    for rel, data in plan.rewrites:
        write_doc(layout, rel, data)
    for item in sorted(plan.sweeps, key=lambda s: (order.get(s.what, 5), s.rel)):
        store_rel = item.rel.removeprefix(f"{STORE_LABEL}/")
        path = layout.state / store_rel if store_rel != item.rel else layout.path(item.rel)
        remove_file(path)
        removed.append(path)
    if names is None:
        return removed + remove_empty_dirs(layout.v2, keep=layout.v2)
    for name in names:
        top = layout.repo_dir(name)
        removed += remove_empty_dirs(top, keep=layout.v2)
        for parent in top.parents:  # `v2/org/` once its last repository went
            if layout.v2 not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break  # not empty
            removed.append(parent)
    return removed
