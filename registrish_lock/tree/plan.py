"""Pure planning: (lock, manifests, observed tree) → what must change. No I/O here.

`desired_tree` marks everything the lock reaches (gc's mark phase too); `make_plan`
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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..console import human_bytes
from ..errors import IntegrityError
from ..lock.lockfile import Lock, LockedReferrer, LockedTag
from ..oci import mediatypes
from ..oci.manifest import Descriptor, Manifest
from ..oci.referrers import artifact_type_of, referrers_index, refers_to
from .layout import Layout, is_last_page
from .state import TreeState, canonical_json, manifest_ref_of

PING_DOCUMENT = canonical_json({})
EMPTY_REFERRERS = canonical_json(
    {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
)


def is_foreign(descriptor: Descriptor) -> bool:
    media_type = descriptor.media_type.lower()
    return bool(descriptor.urls) or "nondistributable" in media_type or "foreign" in media_type


def selected_children(tag: LockedTag, manifest: Manifest, *, top: bool) -> tuple[Descriptor, ...]:
    """The children of an index to mirror: the locked platforms for the tag's own index
    (every child when the lock lists none), every manifest child of a nested index."""
    if not manifest.is_index:
        return ()
    where = f"{tag.name}:{tag.tag}"
    children = tuple(c for c in manifest.children if c.media_type in mediatypes.MANIFEST_TYPES)
    if not top or not tag.platforms:
        return children
    by_digest = {c.digest: c for c in children}
    selected = []
    for locked in tag.platforms:
        child = by_digest.get(locked.digest)
        if child is None:
            raise IntegrityError(
                f"{where}: locked {locked.platform or 'child'} manifest {locked.digest} "
                f"is not in index {manifest.digest}",
                hint="the lock does not match the upstream; run `registrish lock --upgrade`",
            )
        if (child.size, child.media_type) != (locked.size, locked.media_type):
            raise IntegrityError(
                f"{where}: locked {locked.platform or 'child'} manifest {locked.digest} has size/type "
                f"{locked.size}/{locked.media_type}, the index says {child.size}/{child.media_type}",
                hint="regenerate the lock with `registrish lock --upgrade`",
            )
        selected.append(child)
    return tuple(selected)


@dataclass(frozen=True)
class WantManifest:
    name: str
    ref: str  # a tag, or the digest itself
    digest: str
    media_type: str
    size: int
    #: 0 for an image manifest, 1 + the highest child for an index (write order).
    height: int

    @property
    def rel(self) -> str:
        return Layout.rel_manifest(self.name, self.ref)

    @property
    def twin(self) -> str:
        return Layout.rel_manifest_twin(self.name, self.ref, self.media_type)

    @property
    def kind(self) -> str:
        return mediatypes.KIND_OF[self.media_type]


@dataclass(frozen=True)
class WantBlob:
    name: str
    digest: str
    size: int

    @property
    def rel(self) -> str:
        return Layout.rel_blob(self.name, self.digest)


@dataclass(frozen=True, order=True)
class Foreign:
    name: str
    digest: str
    size: int
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Desired:
    """Everything the lock reaches, as tree paths."""

    manifests: tuple[WantManifest, ...] = ()
    tags: tuple[WantManifest, ...] = ()
    blobs: tuple[WantBlob, ...] = ()
    #: rel → (section, bytes) for referrers, tags/list, catalog and ping.
    docs: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)
    #: Store blobs: digest → (size, repository name, upstream source) to fetch from.
    store: Mapping[str, tuple[int, str, str]] = field(default_factory=dict)
    foreign: tuple[Foreign, ...] = ()
    #: Repositories with a locked manifest missing from the tree (gc keeps their content).
    unknown_repos: frozenset[str] = frozenset()

    @property
    def keep(self) -> frozenset[str]:
        paths: set[str] = set(self.docs)
        for want in (*self.manifests, *self.tags):
            paths.update((want.rel, want.twin))
        paths.update(b.rel for b in self.blobs)
        return frozenset(paths)


def desired_tree(lock: Lock, manifests: Mapping[str, Manifest], *, strict: bool = True) -> Desired:
    """Mark what `lock` reaches. `manifests` maps digest → parsed manifest; with
    `strict=False` (gc) a missing one marks its repository unknown instead of failing."""
    want_manifests: dict[tuple[str, str], WantManifest] = {}
    tags: list[WantManifest] = []
    blobs: dict[tuple[str, str], WantBlob] = {}
    store: dict[str, tuple[int, str, str]] = {}
    foreign: set[Foreign] = set()
    unknown: set[str] = set()
    heights: dict[str, int] = {}
    tags_by_name: dict[str, list[str]] = {}

    def height(digest: str) -> int:
        return heights[digest]

    regular = {t.key for t in lock.tags}
    #: cosign tags (`sha256-<hex>.sig` …) → the artifact they point at
    cosign: dict[tuple[str, str], WantManifest] = {}
    #: (name, subject) → the referrers whose manifest names that subject
    referring: dict[tuple[str, str], dict[str, Manifest]] = {}

    def mark(root: LockedTag, where: str) -> bool:
        """Mark `root`'s manifests and blobs; False (gc) when one is missing."""
        reached = _closure(root, manifests, where)
        if reached is None:
            if strict:
                raise IntegrityError(f"{where}: manifest {root.digest} is not available")
            unknown.add(root.name)
            return False
        top = manifests[root.digest]
        if (top.media_type, top.size) != (root.media_type, root.size):
            raise IntegrityError(
                f"{where}: manifest {root.digest} is {top.size} bytes of {top.media_type}, "
                f"the lock says {root.size} bytes of {root.media_type}",
                hint="regenerate the lock with `registrish lock --upgrade`",
            )
        # children before parents, so heights are known when a parent is reached
        for manifest in reversed(reached):
            kids = selected_children(root, manifest, top=manifest.digest == root.digest)
            heights[manifest.digest] = 1 + max((height(k.digest) for k in kids), default=-1)
            key = (root.name, manifest.digest)
            want_manifests.setdefault(
                key,
                WantManifest(
                    root.name,
                    manifest.digest,
                    manifest.digest,
                    manifest.media_type,
                    manifest.size,
                    heights[manifest.digest],
                ),
            )
            for blob in manifest.blobs:
                if is_foreign(blob):
                    foreign.add(Foreign(root.name, blob.digest, blob.size, blob.urls))
                    continue
                known = store.get(blob.digest)
                if known is not None and known[0] != blob.size:
                    raise IntegrityError(
                        f"{where}: blob {blob.digest} is declared with sizes "
                        f"{known[0]} and {blob.size}"
                    )
                store.setdefault(blob.digest, (blob.size, root.name, root.source))
                blobs.setdefault(
                    (root.name, blob.digest), WantBlob(root.name, blob.digest, blob.size)
                )
        return True

    def mark_referrer(tag: LockedTag, r: LockedReferrer) -> None:
        """An artifact is mirrored like a tag of its own (an artifact index in full)."""
        where = f"{tag.name}:{tag.tag}: referrer {r.digest}"
        root = replace(
            tag, digest=r.digest, media_type=r.media_type, size=r.size, platforms=(), referrers=()
        )
        if mark(root, where):
            artifact = manifests[r.digest]
            if artifact_type_of(artifact) != r.artifact_type:
                raise IntegrityError(
                    f"{where}: its artifact type is {artifact_type_of(artifact)!r}, "
                    f"the lock says {r.artifact_type!r}",
                    hint="regenerate the lock with `registrish lock --upgrade`",
                )
            if refers_to(artifact, r.subject):
                referring.setdefault((tag.name, r.subject), {})[r.digest] = artifact
        if r.tag and (tag.name, r.tag) not in regular:
            want = WantManifest(
                tag.name, r.tag, r.digest, r.media_type, r.size, heights.get(r.digest, 0)
            )
            first = cosign.setdefault((tag.name, r.tag), want)
            if first.digest != want.digest:
                raise IntegrityError(
                    f"{tag.name}:{r.tag} is locked to both {first.digest} and {r.digest}",
                    hint=f"re-resolve with `registrish lock --upgrade {tag.name}`",
                )

    for tag in sorted(lock.tags, key=lambda t: t.key):
        where = f"{tag.name}:{tag.tag}"
        tags_by_name.setdefault(tag.name, []).append(tag.tag)
        marked = mark(tag, where)
        for referrer in tag.referrers:
            mark_referrer(tag, referrer)
        tags.append(
            WantManifest(
                tag.name,
                tag.tag,
                tag.digest,
                tag.media_type,
                tag.size,
                height(tag.digest) if marked else 0,
            )
        )
    for (name, cosign_tag), want in sorted(cosign.items()):
        tags_by_name.setdefault(name, []).append(cosign_tag)
        tags.append(want)

    docs: dict[str, tuple[str, bytes]] = {}
    for name, digest in sorted(want_manifests):
        found = referring.get((name, digest))
        docs[Layout.rel_referrers(name, digest)] = (
            "referrers",
            canonical_json(referrers_index(found.values())) if found else EMPTY_REFERRERS,
        )
    for name, names_tags in sorted(tags_by_name.items()):
        docs[Layout.rel_tags_list(name)] = (
            "tags",
            canonical_json({"name": name, "tags": sorted(names_tags)}),
        )
        docs.update((rel, ("tags", data)) for rel, data in last_pages(name, names_tags).items())
    docs[Layout.rel_catalog()] = ("catalog", canonical_json({"repositories": lock.names()}))
    docs[Layout.rel_ping()] = ("ping", PING_DOCUMENT)
    return Desired(
        manifests=tuple(
            sorted(want_manifests.values(), key=lambda w: (w.height, w.name, w.digest))
        ),
        tags=tuple(tags),
        blobs=tuple(sorted(blobs.values(), key=lambda b: (b.name, b.digest))),
        docs=docs,
        store=store,
        foreign=tuple(sorted(foreign)),
        unknown_repos=frozenset(unknown),
    )


#: Repositories with more tags get no `last` pages (their bytes grow as tags²/2).
MAX_LAST_PAGES = 1000


def last_pages(name: str, tags: Iterable[str]) -> dict[str, bytes]:
    """`tags/<tag>.~last` for every tag: the tags/list document of the tags sorted after
    it (byte-wise, as the distribution spec orders them), what a static host answers
    `tags/list?last=<tag>` with. None past `MAX_LAST_PAGES` tags."""
    ordered = sorted(set(tags))
    if len(ordered) > MAX_LAST_PAGES:
        return {}
    return {
        Layout.rel_tags_last(name, tag): canonical_json({"name": name, "tags": ordered[i + 1 :]})
        for i, tag in enumerate(ordered)
    }


def _closure(
    tag: LockedTag, manifests: Mapping[str, Manifest], where: str
) -> list[Manifest] | None:
    """The tag's manifests, parents before children; None when one is missing."""
    order: list[Manifest] = []
    seen: set[str] = set()
    stack: list[tuple[str, Descriptor | None]] = [(tag.digest, None)]
    while stack:
        digest, descriptor = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        manifest = manifests.get(digest)
        if manifest is None:
            return None
        if descriptor is not None and (descriptor.size, descriptor.media_type) != (
            manifest.size,
            manifest.media_type,
        ):
            raise IntegrityError(
                f"{where}: manifest {digest} is {manifest.size} bytes of "
                f"{manifest.media_type}, its index says {descriptor.size} bytes of "
                f"{descriptor.media_type}"
            )
        order.append(manifest)
        kids = selected_children(tag, manifest, top=digest == tag.digest)
        stack.extend((k.digest, k) for k in reversed(kids))
    # parents before children: a child reached by two parents must come after both
    return _topological(order, tag)


def _topological(order: list[Manifest], tag: LockedTag) -> list[Manifest]:
    by_digest = {m.digest: m for m in order}
    result: list[Manifest] = []
    done: set[str] = set()

    def visit(manifest: Manifest) -> None:
        if manifest.digest in done:
            return
        done.add(manifest.digest)
        for kid in selected_children(tag, manifest, top=manifest.digest == tag.digest):
            if kid.digest in by_digest:
                visit(by_digest[kid.digest])
        result.append(manifest)

    visit(by_digest[tag.digest])
    return list(reversed(result))


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobFetch:
    digest: str
    size: int
    name: str
    source: str


@dataclass(frozen=True)
class BlobLink:
    rel: str
    digest: str
    size: int


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


@dataclass(frozen=True)
class Removal:
    rel: str
    what: str
    size: int


@dataclass(frozen=True)
class Plan:
    fetches: tuple[BlobFetch, ...] = ()
    #: Corrupt store blobs (found by --verify) removed before they are fetched again.
    drop_store: tuple[str, ...] = ()
    links: tuple[BlobLink, ...] = ()
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


def _rel(item: BlobLink | DocWrite | Removal) -> str:
    return item.rel


def _manifest_write(want: WantManifest, state: TreeState) -> ManifestWrite | None:
    """None when the exact file and its typed twin already hold the manifest."""
    old = state.manifest_digests.get(want.rel)
    twin_ok = state.manifest_digests.get(want.twin) == want.digest
    stale = _stale_twins(want, state)
    if old == want.digest and twin_ok and not stale:
        return None
    return ManifestWrite(want, old, stale)


def _stale_twins(want: WantManifest, state: TreeState) -> tuple[str, ...]:
    return tuple(
        Layout.rel_manifest_twin(want.name, want.ref, mediatypes.TYPE_OF_KIND[kind])
        for kind in mediatypes.KINDS
        if kind != want.kind
        and Layout.rel_manifest_twin(want.name, want.ref, mediatypes.TYPE_OF_KIND[kind])
        in state.files
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
            links.append(BlobLink(blob.rel, blob.digest, blob.size))

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
