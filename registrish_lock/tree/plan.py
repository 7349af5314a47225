"""Pure planning: (lock, manifests, observed tree) → what must change. No I/O here.

`desired_tree` (in `desired`) marks everything the lock reaches; `make_plan`
diffs it against a `TreeState` into a `Plan` whose sections run in the order that keeps
the tree consistent for a puller: blobs → platform manifests → indexes → referrers → tag
files → tags/list → (stale tags go) → catalog → ping.

Policies:
- An index is stored byte-for-byte as upstream (its digest stays the upstream one) with
  only the locked platform manifests beside it: a *sparse* index. A client asking for an
  unmirrored platform gets 404. A child that is itself an index is mirrored in full.
- Referrers (`referrers = true`): each locked artifact is mirrored like a manifest, and
  `referrers/<digest>` lists those whose `subject` is `<digest>` (OCI 1.1 descriptors
  with artifactType and annotations); every other manifest gets the empty index. cosign
  tags (`sha256-<hex>.sig` …) stay tags.
- Non-distributable ("foreign") layers — a descriptor with `urls`, or a media type naming
  `nondistributable`/`foreign` — are not fetched: clients fetch them from their urls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..console import human_bytes
from ..oci import mediatypes
from .desired import Desired, Foreign, WantBlob, WantManifest
from .layout import is_last_page
from .state import TreeState, manifest_ref_of

# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobFetch:
    digest: str
    size: int
    name: str
    source: str


@dataclass(frozen=True)
class ManifestWrite:
    want: WantManifest
    #: What the exact file holds now (None: absent).
    old_digest: str | None
    #: Typed twins of another kind for the same ref, removed after the write.
    stale_twins: tuple[str, ...] = ()

    @property
    def action(self) -> str:
        if self.old_digest is None:
            return "create"
        return "repair" if self.old_digest == self.want.digest else "move"


@dataclass(frozen=True)
class DocWrite:
    rel: str
    section: str
    data: bytes


@dataclass(frozen=True, order=True)
class Removal:
    """A file a sync plan or gc removes (gc sorts them)."""

    rel: str  # relative to the root (`v2/...`), or `<store>/...` (gc) for the content store
    what: str
    size: int


@dataclass(frozen=True)
class Plan:
    fetches: tuple[BlobFetch, ...] = ()
    #: Corrupt store blobs (found by --verify) removed before they are fetched again.
    drop_store: tuple[str, ...] = ()
    #: Blob files to (re)link from the store: missing, of another size, or refetched.
    links: tuple[WantBlob, ...] = ()
    manifests: tuple[ManifestWrite, ...] = ()
    referrers: tuple[DocWrite, ...] = ()
    tags: tuple[ManifestWrite, ...] = ()
    tag_lists: tuple[DocWrite, ...] = ()
    removals: tuple[Removal, ...] = ()
    catalog: DocWrite | None = None
    ping: DocWrite | None = None
    reused_blobs: int = 0
    reused_bytes: int = 0
    foreign: tuple[Foreign, ...] = ()

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.fetches)

    @property
    def pending(self) -> bool:
        return bool(
            self.fetches
            or self.drop_store
            or self.links
            or self.manifests
            or self.referrers
            or self.tags
            or self.tag_lists
            or self.removals
            or self.catalog
            or self.ping
        )

    def describe(self) -> list[str]:
        """Readable, sorted lines in apply order (what `sync --dry-run` prints)."""
        lines: list[str] = []
        if self.fetches:
            lines.append(
                f"Would fetch {len(self.fetches)} blobs ({human_bytes(self.fetch_bytes)}); "
                f"{self.reused_blobs} already present ({human_bytes(self.reused_bytes)})"
            )
            lines += [
                f"would fetch blob {f.digest} ({human_bytes(f.size)}) from {f.source} for {f.name}"
                for f in sorted(self.fetches, key=lambda f: f.digest)
            ]
        lines += [f"would re-fetch corrupt blob {d}" for d in sorted(self.drop_store)]
        lines += [f"would link blob {link.rel}" for link in sorted(self.links, key=_rel)]
        lines += [
            f"would write manifest {m.want.name}@{m.want.digest} ({m.want.kind})"
            for m in self.manifests
        ]
        lines += [f"would write referrers {d.rel}" for d in sorted(self.referrers, key=_rel)]
        for t in sorted(self.tags, key=lambda t: (t.want.name, t.want.ref)):
            w = t.want
            if t.action == "move":
                lines.append(f"would move tag {w.name}:{w.ref} {t.old_digest} → {w.digest}")
            else:
                lines.append(f"would {t.action} tag {w.name}:{w.ref} → {w.digest} ({w.kind})")
        lines += [f"would write {d.rel}" for d in sorted(self.tag_lists, key=_rel)]
        lines += [f"would remove {r.what} {r.rel}" for r in sorted(self.removals, key=_rel)]
        lines += [f"would write {d.rel}" for d in (self.catalog, self.ping) if d is not None]
        lines += [
            f"not fetching non-distributable layer {f.digest} of {f.name} "
            f"(clients fetch it from {', '.join(f.urls) or 'its urls'})"
            for f in self.foreign
        ]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "fetch": [
                {"digest": f.digest, "size": f.size, "name": f.name, "source": f.source}
                for f in sorted(self.fetches, key=lambda f: f.digest)
            ],
            "fetch_bytes": self.fetch_bytes,
            "reused_blobs": self.reused_blobs,
            "reused_bytes": self.reused_bytes,
            "drop_store": sorted(self.drop_store),
            "link": sorted(link.rel for link in self.links),
            "manifests": [
                {"name": m.want.name, "digest": m.want.digest, "media_type": m.want.media_type}
                for m in self.manifests
            ],
            "referrers": sorted(d.rel for d in self.referrers),
            "tags": [
                {
                    "name": t.want.name,
                    "tag": t.want.ref,
                    "action": t.action,
                    "from": t.old_digest,
                    "to": t.want.digest,
                }
                for t in sorted(self.tags, key=lambda t: (t.want.name, t.want.ref))
            ],
            "documents": sorted(
                d.rel for d in (*self.tag_lists, self.catalog, self.ping) if d is not None
            ),
            "remove": [{"path": r.rel, "what": r.what} for r in sorted(self.removals, key=_rel)],
            "foreign": [
                {"name": f.name, "digest": f.digest, "urls": list(f.urls)} for f in self.foreign
            ],
        }


def _rel(item: WantBlob | DocWrite | Removal) -> str:
    return item.rel


def _manifest_write(want: WantManifest, state: TreeState) -> ManifestWrite | None:
    """None when the exact file and its typed twin already hold the manifest."""
    twin = want.twin
    old = state.manifest_digests.get(want.rel)
    twin_ok = state.manifest_digests.get(twin) == want.digest
    stale = _stale_twins(want, twin, state)
    if old == want.digest and twin_ok and not stale:
        return None
    return ManifestWrite(want, old, stale)


def _stale_twins(want: WantManifest, twin: str, state: TreeState) -> tuple[str, ...]:
    """The twins of `want`'s other kinds the tree holds. `twin` (its own, validated) ends
    in its kind: the others are that path with another kind (building and validating
    each again was half of this diff's time for a tree's manifests)."""
    base = twin[: len(twin) - len(want.kind)]  # `v2/<name>/manifests/<ref>.~`
    return tuple(
        base + kind for kind in mediatypes.KINDS if kind != want.kind and base + kind in state.files
    )


def make_plan(desired: Desired, state: TreeState) -> Plan:
    """Diff what the lock reaches against what the tree holds."""
    fetches: list[BlobFetch] = []
    drop: list[str] = []
    reused = reused_bytes = 0
    for digest, (size, name, source) in sorted(desired.store.items()):
        info = state.store.get(digest)
        if info is not None and info.size == size and digest not in state.bad_store:
            reused += 1
            reused_bytes += size
            continue
        if info is not None:
            drop.append(digest)
        fetches.append(BlobFetch(digest, size, name, source))
    refetched = {f.digest for f in fetches}

    links = []
    for blob in desired.blobs:
        current = state.files.get(blob.rel)
        # a link of the store's inode, or a same-size copy (filesystems without
        # hardlinks); --verify has already re-hashed copies into bad_files
        ok = (
            blob.digest not in refetched
            and current is not None
            and current.size == blob.size
            and blob.rel not in state.bad_files
        )
        if not ok:
            links.append(blob)

    manifests = tuple(w for w in (_manifest_write(m, state) for m in desired.manifests) if w)
    tags = tuple(w for w in (_manifest_write(t, state) for t in desired.tags) if w)

    def doc_writes(section: str) -> list[DocWrite]:
        return [
            DocWrite(rel, sec, data)
            for rel, (sec, data) in sorted(desired.docs.items())
            if sec == section and state.docs.get(rel) != data
        ]

    wanted_tags = {(t.name, t.ref) for t in desired.tags}
    removals = [
        Removal(rel, "tag", info.size)
        for rel, info in sorted(state.files.items())
        if _is_unlocked_tag(rel, wanted_tags)
    ]
    # `last` pages of gone tags (or of a repository past the cap) would list stale tags
    removals += [
        Removal(rel, "tags page", info.size)
        for rel, info in sorted(state.files.items())
        if is_last_page(rel) and rel not in desired.docs
    ]
    catalog, ping = doc_writes("catalog"), doc_writes("ping")
    return Plan(
        fetches=tuple(fetches),
        drop_store=tuple(drop),
        links=tuple(links),
        manifests=manifests,
        referrers=tuple(doc_writes("referrers")),
        tags=tags,
        tag_lists=tuple(doc_writes("tags")),
        removals=tuple(removals),
        catalog=catalog[0] if catalog else None,
        ping=ping[0] if ping else None,
        reused_blobs=reused,
        reused_bytes=reused_bytes,
        foreign=desired.foreign,
    )


def _is_unlocked_tag(rel: str, wanted: set[tuple[str, str]]) -> bool:
    """A tag file (exact or twin) for a (name, tag) the lock no longer has."""
    parsed = manifest_ref_of(rel)
    if parsed is None:
        return False
    name, ref, _twin_type = parsed
    if ref.startswith("sha256:"):
        return False
    return (name, ref) not in wanted
