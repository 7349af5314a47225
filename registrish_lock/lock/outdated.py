"""`registrish outdated`: how the lock compares with upstream now (HEADs and listings only)."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import NotFoundError
from ..upstream.protocols import ManifestSource
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
        return {
            "name": self.name,
            "tag": self.tag,
            "state": self.state,
            "locked": self.locked,
            "upstream": self.upstream,
        }


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


def _image_rows(upstream: ManifestSource, image: ImageSpec, lock: Lock) -> list[Row]:
    locked = {t.tag: t.digest for t in lock.tags if t.name == image.name}
    selected = set(selected_tags(upstream, image))
    digests: dict[str, str | None] = {}
    for tag in sorted(set(locked) | selected):
        try:
            digests[tag] = upstream.head_manifest(image.source, tag).digest
        except NotFoundError:
            digests[tag] = None
    return [
        Row(image.name, tag, state, old, new)
        for tag, state, old, new in classify(locked, selected, digests)
    ]


def outdated(config: Config, lock: Lock, upstream: ManifestSource, *, jobs: int = 8) -> list[Row]:
    """Every (name, tag) of the lock and of the selectors now, with its state."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        per_image = list(pool.map(lambda i: _image_rows(upstream, i, lock), config.images))
    configured = {i.name for i in config.images}
    orphans = [
        Row(t.name, t.tag, "dropped", t.digest, None) for t in lock.tags if t.name not in configured
    ]
    return sorted([row for rows in per_image for row in rows] + orphans)
