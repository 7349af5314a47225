"""`registrish lock`: resolve every selected (image, tag) to digests.

Pins never move unless asked: an image whose config inputs did not change keeps its
entries without a single request; `--upgrade` re-resolves with one `HEAD` per tag and
fetches manifests only for tags that moved.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

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
from .stream import OldLock

#: Every kind of `Change`, in the order summaries list them.
CHANGE_KINDS = ("added", "moved", "removed", "reselected", "referrers")


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    tag: str
    # "added", "moved", "removed", "reselected" (same digest, new platform set),
    # "referrers" (same digest and platforms, other signatures/attestations/SBOMs)
    kind: str
    old: str | None
    new: str | None

    def as_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "tag": self.tag,
            "kind": self.kind,
            "old": self.old,
            "new": self.new,
        }


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


class Sink(Protocol):
    """Where `resolve_into` puts the new lock, one repository after another by name."""

    def entries(self, tags: Iterable[LockedTag]) -> None: ...


@runtime_checkable
class SpanSink(Sink, Protocol):
    """A sink that takes a repository's blocks as the old file has them."""

    def verbatim(self, name: str, span: memoryview, count: int) -> None: ...


@dataclass
class Outcome:
    changes: list[Change]
    unchanged: int
    tags: int


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
    collected: list[LockedTag] = []

    class Collect:
        def entries(self, tags: Iterable[LockedTag]) -> None:
            collected.extend(tags)

    start = OldLock.of_lock(old) if old is not None else None
    outcome = resolve_into(
        config, start, upstream, Collect(), upgrade=upgrade, jobs=jobs, console=console
    )
    lock = make_lock(config.input_hash(), collected, config.image_inputs())
    return Resolution(lock, outcome.changes, outcome.unchanged)


@dataclass(slots=True)
class _Item:
    """One tag to resolve: its image, its old entry, its pin when it may be kept."""

    image: ImageSpec
    tag: str
    old: LockedTag | None
    pinned: LockedTag | None
    #: The digest to resolve it at, or its entry as it stays (`resolve_into` sets it).
    target: str | LockedTag = ""


def resolve_into(
    config: Config,
    old: OldLock | None,
    upstream: ManifestSource,
    sink: Sink,
    *,
    upgrade: Collection[str] | None = None,
    jobs: int = DEFAULT_JOBS,
    console: Console | None = None,
) -> Outcome:
    """Resolve `config` into `sink`, repository by repository in name order, holding one
    chunk of resolved entries at a time. A repository whose pins stay goes to the sink as
    it is (as the old file's blocks, when the sink takes them and they are `lock`'s own)."""
    start = old if old is not None else OldLock(config.lock_path, "", {})
    finder = _referrer_finder(config, upstream, console)

    def upgrading(name: str) -> bool:
        return upgrade is not None and (not upgrade or name in upgrade)

    images = {image.name: image for image in config.images}
    units: deque[_Item | str] = deque()  # in key order: tags to resolve, names kept
    changes: list[Change] = []
    unchanged = count = 0
    tags_by_name: dict[str, list[str]] = {}
    for name in sorted(images.keys() | set(start.names())):
        image = images.get(name)
        if image is None:  # dropped from the config
            changes.extend(_removed(t) for t in start.entries(name))
            continue
        same_inputs = start.inputs.get(name) == image.input_hash()
        if same_inputs and not upgrading(name) and start.count(name):
            units.append(name)
            unchanged += start.count(name)
            count += start.count(name)
            tags_by_name[name] = []  # their tags, only if another name needs them (below)
            continue
        pinned = {t.tag: t for t in start.entries(name)}
        if image.needs_listing and not upgrading(name) and same_inputs:
            tags = sorted(pinned)
        else:
            tags = selected_tags(upstream, image)
        kept = set(tags)
        changes.extend(_removed(t) for tag, t in pinned.items() if tag not in kept)
        for tag in tags:
            entry = pinned.get(tag)
            # a new source: the old pin says nothing about it
            usable = entry if entry is None or entry.source == image.source.repository_ref else None
            units.append(_Item(image, tag, entry, usable))
        tags_by_name[name] = tags
        count += len(tags)
    for name in _tags_needed(tags_by_name):
        if name in tags_by_name and not tags_by_name[name]:
            tags_by_name[name] = [t.tag for t in start.entries(name)]
    _refuse_path_collisions(config, tags_by_name)

    def target(item: _Item) -> str | LockedTag:
        """The digest to resolve the tag at (one HEAD, or its pin), or its entry as it is."""
        image, tag, entry = item.image, item.tag, item.pinned
        if entry is None:
            if console:
                console.debug(f"resolving {image.name}:{tag}")
            return upstream.head_manifest(image.source, tag).digest
        if upgrading(image.name):
            head = upstream.head_manifest(image.source, tag)
            if head.digest == entry.digest and start.inputs.get(image.name) == image.input_hash():
                return entry  # signatures get added to old digests below
            return head.digest
        # Inputs changed (say, the platform list) but the pin must not move:
        # re-derive the selection from the pinned digest.
        return entry.digest

    # HEADs first (free on Docker Hub), so the manifest GETs are known before any is made.
    items = [u for u in units if isinstance(u, _Item)]
    for chunk in _chunks(items):
        for item, found in zip(chunk, map_parallel(target, chunk, jobs), strict=True):
            item.target = found
    cache = ManifestCache(upstream, config.layout)
    for item in items:
        if isinstance(item.target, str):
            cache.expect(item.image.source, item.target)
    _plan_gets(upstream, cache, items)
    del items

    def run(item: _Item) -> LockedTag:
        resolver = _TagResolver(cache, item.image, finder, console)
        if isinstance(item.target, LockedTag):
            return resolver.with_referrers(item.target)
        try:
            return resolver.resolve(item.tag, item.target)
        finally:
            cache.release(item.image.source, item.target)

    pending: list[_Item] = []

    def flush() -> None:
        nonlocal unchanged
        resolved = map_parallel(run, pending, jobs)
        for item, entry in zip(pending, resolved, strict=True):
            if item.old == entry:
                unchanged += 1
            elif (change := _change(item.old, entry)) is not None:
                changes.append(change)
        sink.entries(resolved)
        pending.clear()

    while units:
        unit = units.popleft()
        if isinstance(unit, _Item):
            pending.append(unit)
            if len(pending) >= CHUNK:
                flush()
            continue
        flush()
        span = start.verbatim(unit)
        if span is not None and isinstance(sink, SpanSink):
            sink.verbatim(unit, span, start.count(unit))
        else:
            sink.entries(start.entries(unit))
    flush()
    if console:
        console.debug(
            f"manifests: {cache.fetched} fetched, {cache.from_tree} read from {config.root}"
        )
    changes.sort(key=lambda c: (c.name, c.tag))
    return Outcome(changes, unchanged, count)


#: Tags resolved (and their entries held) at a time.
CHUNK = 1024


def _chunks(items: list[_Item]) -> Iterator[list[_Item]]:
    for at in range(0, len(items), CHUNK):
        yield items[at : at + CHUNK]


def _tags_needed(tags_by_name: Mapping[str, list[str]]) -> set[str]:
    """The repositories whose tags decide a path collision: `x` when another repository
    is `x/manifests` or below it (its directories would be `x`'s tag files)."""
    needed: set[str] = set()
    for name in tags_by_name:
        parts = name.split("/")
        needed.update("/".join(parts[:i]) for i, part in enumerate(parts) if part == "manifests")
    return needed


def _plan_gets(upstream: ManifestSource, cache: ManifestCache, items: list[_Item]) -> None:
    """Tell a rate-limited upstream how many manifest GETs the run will make at least (the
    distinct top-level digests nobody holds; an index's children come on top)."""
    if not isinstance(upstream, ManifestBudget):
        return
    wanted = {  # each (repository, digest) once, with a name whose tree may hold it
        (item.image.source, item.target): item.image.name
        for item in items
        if isinstance(item.target, str)
    }
    gets = Counter(  # the tree's twins are only checked here: read again when resolved
        repo.registry
        for (repo, digest), name in wanted.items()
        if cache.local(repo, digest, name, keep=False) is None
    )
    for registry, count in sorted(gets.items()):
        upstream.plan_manifest_gets(registry, count)


def _refuse_path_collisions(config: Config, tags_by_name: Mapping[str, list[str]]) -> None:
    """The tags an upstream listing selected can put one repository's directory where
    another's tag file is (`x:tags` and `x/manifests/tags`): refused before anything is
    written."""
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


def _removed(a: LockedTag) -> Change:
    return Change(a.name, a.tag, "removed", a.digest, None)


def _change(a: LockedTag | None, b: LockedTag | None) -> Change | None:
    """What happened to one (name, tag) between the old entry `a` and the new `b`."""
    if a == b:
        return None
    if a is None:
        assert b is not None
        return Change(b.name, b.tag, "added", None, b.digest)
    if b is None:
        return Change(a.name, a.tag, "removed", a.digest, None)
    if a.digest != b.digest:
        kind = "moved"
    elif (a.platforms, a.total_size) == (b.platforms, b.total_size):
        kind = "referrers"
    else:
        kind = "reselected"
    return Change(a.name, a.tag, kind, a.digest, b.digest)
