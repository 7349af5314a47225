"""`registrish outdated`: how the lock compares with upstream now (HEADs and listings only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import NotFoundError
from ..pool import map_parallel
from ..upstream.protocols import DEFAULT_JOBS, ManifestSource
from .config import Config, ImageSpec
from .lockfile import Lock
from .resolve import selected_tags

#: Row states, in the order a table shows them. Only "current" is not outdated.
STATES = ("moved", "new", "gone", "dropped", "current")


@dataclass(frozen=True, order=True)
class Row:
    name: str
    tag: str
    state: str
    locked: str | None
    upstream: str | None

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def classify(
    locked: Mapping[str, str], selected: set[str], upstream: Mapping[str, str | None]
) -> list[tuple[str, str, str | None, str | None]]:
    """Pure: (tag, state, locked digest, upstream digest) for one image.

    `locked` maps locked tags to digests, `selected` is what the selectors pick now,
    `upstream` maps every tag we asked about to its digest (None when it is gone).
    """
    rows = []
    for tag in sorted(set(locked) | selected):
        old, new = locked.get(tag), upstream.get(tag)
        if old is None:
            state = "new"
        elif new is None:
            state = "gone"
        elif tag not in selected:
            state = "dropped"
        elif new != old:
            state = "moved"
        else:
            state = "current"
        rows.append((tag, state, old, new))
    return rows


def _upstream_digest(upstream: ManifestSource, image: ImageSpec, tag: str) -> str | None:
    try:
        return upstream.head_manifest(image.source, tag).digest
    except NotFoundError:
        return None


def outdated(
    config: Config, lock: Lock, upstream: ManifestSource, *, jobs: int = DEFAULT_JOBS
) -> list[Row]:
    """Every (name, tag) of the lock and of the selectors now, with its state. Listings,
    then one HEAD per tag, `jobs` at a time (the client bounds each registry as well)."""
    images = config.images
    selected = map_parallel(lambda i: set(selected_tags(upstream, i)), images, jobs)
    locked: dict[str, dict[str, str]] = {i.name: {} for i in images}
    for t in lock.tags:
        locked.get(t.name, {})[t.tag] = t.digest
    asks = [
        (image, tag)
        for image, picked in zip(images, selected, strict=True)
        for tag in sorted(set(locked[image.name]) | picked)
    ]
    found = map_parallel(lambda a: _upstream_digest(upstream, *a), asks, jobs)
    digests: dict[str, dict[str, str | None]] = {i.name: {} for i in images}
    for (image, tag), digest in zip(asks, found, strict=True):
        digests[image.name][tag] = digest
    rows = [
        Row(image.name, tag, state, old, new)
        for image, picked in zip(images, selected, strict=True)
        for tag, state, old, new in classify(locked[image.name], picked, digests[image.name])
    ]
    configured = {i.name for i in images}
    orphans = [
        Row(t.name, t.tag, "dropped", t.digest, None) for t in lock.tags if t.name not in configured
    ]
    return sorted(rows + orphans)
