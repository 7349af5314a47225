"""Which upstream tags an `[[image]]` selects. Pure functions over tag lists."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from packaging.version import InvalidVersion, Version

from .config import ImageSpec

T = TypeVar("T")


def tag_version(tag: str) -> Version | None:
    """The PEP 440 version a tag names, tolerating a `v` prefix (`v1.2` → 1.2)."""
    text = tag[1:] if tag[:1] in ("v", "V") and tag[1:2].isdigit() else tag
    try:
        return Version(text)
    except InvalidVersion:
        return None


def newest_first(items: Iterable[T], tag: Callable[[T], str]) -> list[T]:
    """`items` in the order people read tags in (`ls`, the browse page): tags that parse
    as versions newest first (`1.0.10` before `1.0.2`, `2.0` before `2.0rc1`), then every
    other tag (`latest`, `edge`) by name. Equal versions (`1.0`, `v1.0`) keep name order."""
    versions: list[tuple[Version, T]] = []
    others: list[T] = []
    for item in sorted(items, key=tag):
        version = tag_version(tag(item))
        if version is None:
            others.append(item)
        else:
            versions.append((version, item))
    versions.sort(key=lambda pair: pair[0], reverse=True)  # stable: ties stay by name
    return [item for _, item in versions] + others


def _sort_key(tag: str) -> tuple[int, Version, str]:
    # Non-version tags sort before every version, then by name: `latest = N` keeps
    # the highest versions.
    version = tag_version(tag)
    return (0, Version("0"), tag) if version is None else (1, version, tag)


def select_from_listing(image: ImageSpec, upstream_tags: Iterable[str]) -> list[str]:
    """The tags `versions`/`match`/`latest` select from an upstream listing
    (exact `tags` are not included here)."""
    chosen = []
    for tag in upstream_tags:
        if image.match is not None and image.match.search(tag) is None:
            continue
        if image.versions is not None:
            version = tag_version(tag)
            # PEP 440: pre-releases only when the specifier names one (packaging's
            # default would admit them when nothing else matches).
            allow_pre = bool(image.versions.prereleases)
            if version is None or not image.versions.contains(version, prereleases=allow_pre):
                continue
        chosen.append(tag)
    chosen.sort(key=_sort_key)
    if image.latest is not None:
        chosen = chosen[-image.latest :]
    return sorted(chosen)
