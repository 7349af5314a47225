"""`registrish lock`: resolve every selected (image, tag) to digests.

Pins never move unless asked: an image whose config inputs did not change keeps its
entries without a single request; `--upgrade` re-resolves with one `HEAD` per tag and
fetches manifests only for tags that moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from ..console import Console
from ..errors import ConfigError, NotFoundError, UpstreamError
from ..oci import mediatypes
from ..oci.manifest import Manifest, Platform
from ..pool import map_parallel
from ..tree.layout import path_collisions
from ..upstream.manifestcache import ManifestCache
from ..upstream.protocols import DEFAULT_JOBS, ManifestBudget, ManifestSource
from .config import Config, ImageSpec
from .discovery import ReferrerFinder, ReferrersUpstream
from .lockfile import Lock, LockedManifest, LockedTag, make_lock
from .selectors import select_from_listing

#: Every kind of `Change`, in the order summaries list them.
CHANGE_KINDS = ("added", "moved", "removed", "reselected", "referrers")


@dataclass(frozen=True)
class Change:
    name: str
    tag: str
    # "added", "moved", "removed", "reselected" (same digest, new platform set),
    # "referrers" (same digest and platforms, other signatures/attestations/SBOMs)
    kind: str
    old: str | None
    new: str | None


@dataclass
class Resolution:
    lock: Lock
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0


def _select_platforms(
    index: Manifest, wanted: tuple[Platform, ...] | None, where: str
) -> list[tuple[str, str, str, int]]:
    """(platform, digest, media type, size) of the children an index keeps."""
    chosen = []
    for child in index.children:
        label = str(child.platform) if child.platform else ""
        if wanted is None or (
            child.platform is not None and any(child.platform.matches(w) for w in wanted)
        ):
            chosen.append((label, child.digest, child.media_type, child.size))
    if not chosen:
        if not index.children:
            raise NotFoundError(f"{where} is an empty index", hint="it has nothing to mirror")
        available = sorted({str(c.platform) for c in index.children if c.platform})
        offers = (
            f"it offers {', '.join(available)}; adjust 'platforms'"
            if available
            else "its children name no platform; remove 'platforms' to mirror every child"
        )
        raise NotFoundError(
            f"{where} has none of the platforms {', '.join(str(w) for w in wanted or ())}",
            hint=offers,
        )
    return chosen


class _TagResolver:
    def __init__(
        self,
        cache: ManifestCache,
        image: ImageSpec,
        finder: ReferrerFinder | None = None,
        console: Console | None = None,
    ) -> None:
        self.cache = cache
        self.image = image
        self.console = console
        self.repo = image.source
        self.finder = finder if image.referrers else None

    def with_referrers(self, entry: LockedTag) -> LockedTag:
        """`entry` with the referrers of its manifests found now (unchanged when off)."""
        if self.finder is None:
            return entry
        found = self.finder.find(self.repo, entry.manifest_digests)
        return replace(entry, referrers=tuple(sorted(f.locked for f in found)))

    def _fetch(self, digest: str) -> Manifest:
        return self.cache.get(self.repo, digest, self.image.name)

    def _blob_bytes(self, manifest: Manifest, seen: set[str]) -> int:
        """Bytes of a manifest and everything below it, each digest counted once."""
        if manifest.digest in seen:
            return 0
        seen.add(manifest.digest)
        total = manifest.size
        if manifest.is_index:
            for child in manifest.children:
                total += self._blob_bytes(self._fetch(child.digest), seen)
            return total
        for blob in manifest.blobs:
            if blob.digest not in seen:
                seen.add(blob.digest)
                total += blob.size
        return total

    def resolve(self, tag: str, digest: str) -> LockedTag:
        where = f"{self.image.name}:{tag} ({self.repo})"
        top = self._fetch(digest)
        seen = {top.digest}
        total = top.size
        platforms: list[LockedManifest] = []
        if top.is_index:
            skipped: set[str] = set()
            for label, child_digest, media_type, size in _select_platforms(
                top, self.image.platforms, where
            ):
                if media_type not in mediatypes.MANIFEST_TYPES:
                    skipped.add(media_type)  # not a manifest we can mirror (schema 1, foreign)
                    continue
                child = self._fetch(child_digest)
                total += self._blob_bytes(child, seen)
                platforms.append(LockedManifest(label, child_digest, child.media_type, size))
            if skipped:
                types = ", ".join(sorted(skipped))
                if not platforms:
                    raise UpstreamError(
                        f"{where}: no child of the index is a manifest registrish can mirror "
                        f"({types})",
                        hint="registrish mirrors OCI and Docker v2 schema 2 manifests",
                    )
                if self.console:
                    self.console.warn(f"{where}: left out index children of type {types}")
        else:
            total = self._blob_bytes(top, set())
        return self.with_referrers(
            LockedTag(
                name=self.image.name,
                tag=tag,
                source=self.repo.repository_ref,
                digest=digest,
                media_type=top.media_type,
                size=top.size,
                total_size=total,
                platforms=tuple(sorted(platforms)),
            )
        )


def selected_tags(upstream: ManifestSource, image: ImageSpec) -> list[str]:
    """Exact tags plus what the selectors pick from the upstream listing."""
    tags = set(image.tags)
    if image.needs_listing:
        listing = upstream.list_tags(image.source)
        picked = select_from_listing(image, listing)
        if not picked and not image.tags:
            raise NotFoundError(
                f"{image.key} ({image.source}): the selectors match none of "
                f"{len(listing)} upstream tags",
                hint="check 'versions' and 'match' against the upstream's tags",
            )
        tags.update(picked)
    return sorted(tags)


def resolve(
    config: Config,
    old: Lock | None,
    upstream: ManifestSource,
    *,
    upgrade: Collection[str] | None = None,
    jobs: int = DEFAULT_JOBS,
    console: Console | None = None,
) -> Resolution:
    """Resolve `config` against `upstream`, keeping `old`'s pins where they still hold.

    `upgrade` is None (keep pins), empty (upgrade everything) or a set of names.
    """
    old_by_key = old.by_key() if old else {}
    old_inputs = dict(old.inputs) if old else {}
    finder = _referrer_finder(config, upstream, console)

    def upgrading(name: str) -> bool:
        return upgrade is not None and (not upgrade or name in upgrade)

    # Work items: (image, tag, pinned entry or None, keep-as-is?)
    keep: list[LockedTag] = []
    work: list[tuple[ImageSpec, str, LockedTag | None]] = []
    for image in config.images:
        same_inputs = old_inputs.get(image.name) == image.input_hash()
        pinned = [t for (n, _), t in old_by_key.items() if n == image.name]
        if same_inputs and not upgrading(image.name) and pinned:
            keep.extend(pinned)
            continue
        if image.needs_listing and not upgrading(image.name) and same_inputs:
            tags = sorted(t.tag for t in pinned)
        else:
            tags = selected_tags(upstream, image)
        for tag in tags:
            entry = old_by_key.get((image.name, tag))
            if entry is not None and entry.source != image.source.repository_ref:
                entry = None  # a new source: the old pin says nothing about it
            work.append((image, tag, entry))

    def target(item: tuple[ImageSpec, str, LockedTag | None]) -> str | LockedTag:
        """The digest to resolve the tag at (one HEAD, or its pin), or its entry as it is."""
        image, tag, entry = item
        if entry is None:
            if console:
                console.debug(f"resolving {image.name}:{tag}")
            return upstream.head_manifest(image.source, tag).digest
        if upgrading(image.name):
            head = upstream.head_manifest(image.source, tag)
            if head.digest == entry.digest and old_inputs.get(image.name) == image.input_hash():
                return entry  # signatures get added to old digests below
            return head.digest
        # Inputs changed (say, the platform list) but the pin must not move:
        # re-derive the selection from the pinned digest.
        return entry.digest

    # HEADs first (free on Docker Hub), so the manifest GETs are known before any is made.
    targets = map_parallel(target, work, jobs)
    cache = ManifestCache(upstream, config.layout)
    _plan_gets(upstream, cache, zip(work, targets, strict=True))

    def run(item: tuple[tuple[ImageSpec, str, LockedTag | None], str | LockedTag]) -> LockedTag:
        (image, tag, _entry), digest = item
        resolver = _TagResolver(cache, image, finder, console)
        if isinstance(digest, LockedTag):
            return resolver.with_referrers(digest)
        return resolver.resolve(tag, digest)

    resolved = map_parallel(run, list(zip(work, targets, strict=True)), jobs)
    if console:
        console.debug(
            f"manifests: {cache.fetched} fetched, {cache.from_tree} read from {config.root}"
        )

    new_lock = make_lock(
        config.input_hash(),
        [*keep, *resolved],
        {image.name: image.input_hash() for image in config.images},
    )
    _refuse_path_collisions(config, new_lock)
    return Resolution(
        lock=new_lock,
        changes=diff_locks(old, new_lock),
        unchanged=sum(1 for t in new_lock.tags if old_by_key.get(t.key) == t),
    )


def _plan_gets(
    upstream: ManifestSource,
    cache: ManifestCache,
    targets: Iterable[tuple[tuple[ImageSpec, str, LockedTag | None], str | LockedTag]],
) -> None:
    """Tell a rate-limited upstream how many manifest GETs the run will make at least (the
    distinct top-level digests nobody holds; an index's children come on top)."""
    if not isinstance(upstream, ManifestBudget):
        return
    wanted = {  # each (repository, digest) once, with a name whose tree may hold it
        (image.source, digest): image.name
        for (image, _tag, _entry), digest in targets
        if isinstance(digest, str)
    }
    gets = Counter(
        repo.registry
        for (repo, digest), name in wanted.items()
        if cache.local(repo, digest, name) is None
    )
    for registry, count in sorted(gets.items()):
        upstream.plan_manifest_gets(registry, count)


def _refuse_path_collisions(config: Config, lock: Lock) -> None:
    """The tags an upstream listing selected can put one repository's directory where
    another's tag file is (`x:tags` and `x/manifests/tags`): refused before anything is
    written."""
    tags_by_name: dict[str, list[str]] = {i.name: [] for i in config.images}
    for entry in lock.tags:
        tags_by_name.setdefault(entry.name, []).append(entry.tag)
    keys = {i.name: i.key for i in config.images}
    for name, problem in path_collisions(tags_by_name):
        raise ConfigError(
            config.path, f"{keys.get(name, 'image')}.name", problem, hint="give it another 'name'"
        )


def _referrer_finder(
    config: Config, upstream: ManifestSource, console: Console | None
) -> ReferrerFinder | None:
    wanting = [i for i in config.images if i.referrers]
    if not wanting:
        return None
    if not isinstance(upstream, ReferrersUpstream):
        raise ConfigError(
            config.path,
            f"{wanting[0].key}.referrers",
            "this source cannot list referrers",
            hint="remove 'referrers = true' for it",
        )
    return ReferrerFinder(upstream, console)


def diff_locks(old: Lock | None, new: Lock) -> list[Change]:
    before = old.by_key() if old else {}
    after = new.by_key()
    changes = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if a is None:
            assert b is not None
            changes.append(Change(key[0], key[1], "added", None, b.digest))
        elif b is None:
            changes.append(Change(key[0], key[1], "removed", a.digest, None))
        elif a.digest != b.digest:
            changes.append(Change(key[0], key[1], "moved", a.digest, b.digest))
        elif (a.platforms, a.total_size) == (b.platforms, b.total_size):
            changes.append(Change(key[0], key[1], "referrers", a.digest, b.digest))
        else:
            changes.append(Change(key[0], key[1], "reselected", a.digest, b.digest))
    return changes
