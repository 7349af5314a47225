"""`registrish ls`: what a tree serves, per repository and tag, from the lock and the tree
alone (no network). The facts are the browse page's (`browse.read_model`: platforms from
the locked manifests and image configs in the tree), in its order (newest version first),
plus whether the tree serves the locked digest under the tag yet (a sync may be pending).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..console import human_bytes
from ..lock.lockfile import Lock
from ..tree.layout import Layout
from ..tree.state import hash_file
from .browse import TagFacts, read_model


@dataclass(frozen=True)
class Listed:
    facts: TagFacts
    #: The tree serves `facts.digest` under the tag (False: not synced since the lock changed).
    served: bool

    def platforms(self) -> list[str]:
        """`os/arch` of each image ("?" when unknown); `-` for a non-image artifact."""
        if self.facts.artifact_type is not None:
            return []
        return [p.platform or "?" for p in self.facts.platforms]

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "tag": f.tag,
            "digest": f.digest,
            "media_type": f.media_type,
            "size": f.total_size,
            "source": f.source,
            "served": self.served,
            "artifact_type": f.artifact_type,
            "platforms": [
                {"platform": p.platform, "digest": p.digest, "size": p.size} for p in f.platforms
            ],
        }


Listing = list[tuple[str, list[Listed]]]


def _serves(layout: Layout, facts: TagFacts) -> bool:
    """Whether the tag's file in the tree holds the locked manifest (its digest)."""
    path = layout.path(Layout.rel_manifest_twin(facts.name, facts.tag, facts.media_type))
    try:
        return hash_file(path)[0] == facts.digest
    except (FileNotFoundError, NotADirectoryError):
        return False


def list_tree(layout: Layout, lock: Lock, names: Sequence[str] = ()) -> Listing:
    """Every locked repository (or only those in `names`) with its tags."""
    if names:
        lock = replace(lock, tags=tuple(t for t in lock.tags if t.name in names))
    return [
        (name, [Listed(facts, _serves(layout, facts)) for facts in tags])
        for name, tags in read_model(layout, lock).repositories
    ]


def listing_json(listing: Listing) -> dict[str, Any]:
    return {
        "repositories": [
            {"name": name, "tags": [row.to_json() for row in rows]} for name, rows in listing
        ]
    }


def listing_lines(listing: Listing) -> list[str]:
    """A table, one line per tag: REPOSITORY TAG DIGEST PLATFORMS SIZE SOURCE."""
    header = ("REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "SOURCE")
    rows = [header]
    for name, listed in listing:
        for row in listed:
            f = row.facts
            platforms = ", ".join(row.platforms()) or (f.artifact_type or "-")
            source = f.source if row.served else f"{f.source}  (not synced)"
            rows.append((name, f.tag, f.digest[:19], platforms, human_bytes(f.total_size), source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
