"""What the lock reaches, as tree paths: `desired_tree` (pure), which is also gc's mark
phase. Policies (sparse indexes, referrers, foreign layers) are described in `plan`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..errors import IntegrityError
from ..lock.lockfile import Lock, LockedReferrer, LockedTag
from ..oci import mediatypes

# The documents are re-exported: tests and callers of the desired tree name them here.
from ..oci.documents import EMPTY_REFERRERS as EMPTY_REFERRERS
from ..oci.documents import PING_DOCUMENT as PING_DOCUMENT
from ..oci.documents import canonical_json
from ..oci.manifest import Descriptor, Manifest
from ..oci.referrers import artifact_type_of, referrers_index, refers_to
from .layout import Layout


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


@dataclass(frozen=True, slots=True)  # slots: several per tag at scale
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


@dataclass(frozen=True, slots=True)
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
    docs[Layout.rel_catalog()] = ("catalog", catalog_document(lock))
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


def catalog_document(lock: Lock) -> bytes:
    return canonical_json({"repositories": lock.names()})


#: Repositories with more tags get no `last` pages: their bytes grow as tags²/2, so this
#: bounds every page to 99 tag names (O(1) bytes per tag; 1,000 was 4.5 MB per repository).
MAX_LAST_PAGES = 100


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
