"""What the browse page shows: repositories, tags, platforms, sizes and digests.

`model_from` (lock + manifest/config bytes → `BrowseModel`) is pure; `read_model` is the
only I/O (it reads locked manifests and single-image configs from the tree, so an unsynced
object simply shows fewer facts). `browse_page` turns a model into the page and its
per-repository data files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import IntegrityError
from ..lock.lockfile import Lock, LockedTag
from ..lock.selectors import newest_first
from ..oci import mediatypes
from ..oci.manifest import Manifest, parse_manifest, sha256_digest
from ..tree.layout import Layout

#: Image configs larger than this are not read for their platform (they never are).
MAX_CONFIG_BYTES = 1 << 20
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


@dataclass(frozen=True, order=True)
class PlatformFacts:
    """One runnable image of a tag: its platform and what pulling it downloads."""

    platform: str  # "linux/amd64", or "" when unknown
    digest: str
    #: Manifest + config + layers in bytes; None when the manifest is not in the tree.
    size: int | None = None
    layers: int | None = None


@dataclass(frozen=True)
class TagFacts:
    name: str
    tag: str
    source: str
    digest: str
    media_type: str
    total_size: int
    platforms: tuple[PlatformFacts, ...] = ()
    #: Set for OCI artifacts that are not images (Helm charts, signatures …).
    artifact_type: str | None = None

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)


@dataclass(frozen=True)
class BrowseModel:
    """Tags grouped by repository: repositories by name, tags newest version first."""

    repositories: tuple[tuple[str, tuple[TagFacts, ...]], ...] = ()

    @property
    def tag_count(self) -> int:
        return sum(len(tags) for _, tags in self.repositories)


# --- facts (pure) --------------------------------------------------------------------------


def _parse_once(data: bytes | None, digest: str) -> Manifest | None:
    if data is None:
        return None
    try:
        return parse_manifest(data, expected_digest=digest)
    except IntegrityError:  # a damaged file: the page shows less, `sync --verify` repairs
        return None


def _platform_of_config(data: bytes | None) -> str:
    """`os/arch[/variant]` from an image config; "" when absent or malformed."""
    if data is None:
        return ""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    os_, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return ""
    return f"{os_}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_}/{arch}"


def _image_size(manifest: Manifest) -> int:
    return manifest.size + sum(d.size for d in manifest.blobs)


def _artifact_type(manifest: Manifest) -> str | None:
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.config is not None and manifest.config.media_type not in IMAGE_CONFIG_TYPES:
        return manifest.config.media_type
    return None


def tag_facts(
    tag: LockedTag,
    manifests: Mapping[str, bytes],
    configs: Mapping[str, bytes],
    parsed: dict[str, Manifest | None] | None = None,
) -> TagFacts:
    """What the page says about one locked tag. `manifests` maps digests to manifest
    bytes (verified against the digest here), `configs` config digests to config bytes;
    anything missing is shown as unknown. `parsed`: manifests parsed for earlier tags
    (many tags share one), filled in here."""
    memo: dict[str, Manifest | None] = {} if parsed is None else parsed

    def _parse(data: bytes | None, digest: str) -> Manifest | None:
        if digest not in memo:
            memo[digest] = _parse_once(data, digest)
        return memo[digest]

    platforms: list[PlatformFacts] = []
    artifact_type = None
    if tag.platforms:
        for p in tag.platforms:
            child = _parse(manifests.get(p.digest), p.digest)
            platforms.append(
                PlatformFacts(
                    platform=p.platform,
                    digest=p.digest,
                    size=_image_size(child) if child else None,
                    layers=len(child.layers) if child else None,
                )
            )
    elif not mediatypes.is_index(tag.media_type):
        image = _parse(manifests.get(tag.digest), tag.digest)
        if image is not None:
            artifact_type = _artifact_type(image)
            platform = ""
            if artifact_type is None and image.config is not None:
                platform = _platform_of_config(configs.get(image.config.digest))
            platforms.append(
                PlatformFacts(platform, tag.digest, _image_size(image), len(image.layers))
            )
    return TagFacts(
        name=tag.name,
        tag=tag.tag,
        source=tag.source,
        digest=tag.digest,
        media_type=tag.media_type,
        total_size=tag.total_size,
        platforms=tuple(sorted(platforms)),
        artifact_type=artifact_type,
    )


def model_from(
    lock: Lock,
    manifests: Mapping[str, bytes],
    configs: Mapping[str, bytes],
    parsed: dict[str, Manifest | None] | None = None,
) -> BrowseModel:
    """The page's content from the lock plus tree bytes (see `tag_facts`). Pure.
    Repositories by name; tags newest version first (`selectors.newest_first`)."""
    by_name: dict[str, list[TagFacts]] = {}
    parsed = {} if parsed is None else parsed  # see tag_facts
    for tag in lock.tags:
        by_name.setdefault(tag.name, []).append(tag_facts(tag, manifests, configs, parsed))
    return BrowseModel(
        tuple(
            (name, tuple(newest_first(tags, lambda t: t.tag)))
            for name, tags in sorted(by_name.items())
        )
    )


# --- reading the tree (I/O) ----------------------------------------------------------------


def _read(layout: Layout, rel: str, limit: int) -> bytes | None:
    path = layout.path(rel)
    try:
        if path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_model(layout: Layout, lock: Lock) -> BrowseModel:
    """`model_from` with the locked image manifests (and the configs of single-image
    tags, for their platform) read from the tree. Missing files mean unknown facts."""
    manifests: dict[str, bytes] = {}
    configs: dict[str, bytes] = {}
    for tag in lock.tags:
        wanted = [p.digest for p in tag.platforms]
        if not mediatypes.is_index(tag.media_type):
            wanted.append(tag.digest)
        for digest in wanted:
            if digest not in manifests:
                data = _read(layout, Layout.rel_manifest(tag.name, digest), 4 << 20)
                if data is None:
                    continue
                manifests[digest] = data
            data = manifests[digest]
            # a manifest read for another tag (an index's child) still gives this one,
            # a single image, its config's platform
            if digest == tag.digest:
                image = _parse_once(data, digest)
                if image is not None and image.config is not None:
                    config = image.config
                    if config.media_type in IMAGE_CONFIG_TYPES and config.digest not in configs:
                        blob = _read(
                            layout, Layout.rel_blob(tag.name, config.digest), MAX_CONFIG_BYTES
                        )
                        # only bytes that hash to the digest are trusted
                        if blob is not None and sha256_digest(blob) == config.digest:
                            configs[config.digest] = blob
    return model_from(lock, manifests, configs)
