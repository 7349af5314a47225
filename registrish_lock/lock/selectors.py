"""Which upstream tags an `[[image]]` selects. Pure functions over tag lists."""

from __future__ import annotations

from collections.abc import Iterable

from packaging.version import InvalidVersion, Version

from .config import ImageSpec


def tag_version(tag: str) -> Version | None:
    """The PEP 440 version a tag names, tolerating a `v` prefix (`v1.2` → 1.2)."""
    text = tag[1:] if tag[:1] in ("v", "V") and tag[1:2].isdigit() else tag
    try:
        return Version(text)
    except InvalidVersion:
        return None


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
