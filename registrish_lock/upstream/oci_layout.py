"""`oci:PATH`, an OCI image layout: its tags are the `org.opencontainers.image.ref.name`
annotations of `index.json`; manifests and blobs are `blobs/sha256/<hex>`, read as they are."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError, NotFoundError
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, parse_manifest, sha256_digest
from ..oci.reference import OCI_LAYOUT, Reference, digest_hex, is_digest, validate_digest
from .local import (
    REF_NAME,
    LocalSource,
    LocalSourceError,
    add_tag,
    copy_verified,
    read_capped,
    sniff_manifest_type,
    tag_of_ref_name,
)
from .protocols import BlobRequest, FetchedManifest, ManifestInfo


@dataclass(frozen=True)
class _Layout:
    label: str
    root: Path  # resolved
    tags: Mapping[str, ManifestInfo]
    #: media types index.json declares for its descriptors (helps manifests without one)
    types: Mapping[str, str]

    def inside(self, rel: str) -> Path:
        """`root/rel` with symlinks resolved; refuses anything that leaves the layout."""
        real = Path(os.path.realpath(self.root / rel))
        if real != self.root and self.root not in real.parents:
            raise LocalSourceError(
                f"{self.label}: {rel} is a symlink leading outside the layout",
                hint="local sources are read inside their directory only; copy the blob in",
            )
        return real

    def blob(self, digest: str) -> Path:
        path = self.inside(f"blobs/sha256/{digest_hex(digest)}")
        if not path.is_file():
            raise NotFoundError(
                f"{self.label}: blob {digest} is missing",
                hint="the layout is incomplete; copy it again (e.g. skopeo copy … oci:PATH:TAG)",
            )
        return path


def _load_layout(root: Path, label: str) -> _Layout:
    if not root.is_dir():
        raise LocalSourceError(
            f"{label}: no such directory {root}", hint="the path is relative to the config file"
        )
    real_root = Path(os.path.realpath(root))
    layout = _Layout(label=label, root=real_root, tags={}, types={})
    index_path = layout.inside("index.json")
    try:
        with index_path.open("rb") as f:
            data = read_capped(f, MAX_MANIFEST_BYTES, f"{label}: index.json")
    except FileNotFoundError:
        raise LocalSourceError(
            f"{label}: not an OCI image layout (no index.json in {root})",
            hint="create one with `skopeo copy … oci:PATH:TAG` or `umoci init --layout PATH`",
        ) from None
    try:
        index = parse_manifest(data, content_type=mediatypes.OCI_INDEX)
        raw = json.loads(data)["manifests"]
    except (IntegrityError, ValueError, KeyError, TypeError) as exc:
        raise LocalSourceError(f"{label}: index.json is not a valid OCI index: {exc}") from None
    if not index.is_index:
        raise LocalSourceError(f"{label}: index.json is a {index.media_type}, not an index")
    tags: dict[str, ManifestInfo] = {}
    types: dict[str, str] = {}
    for child, doc in zip(index.children, raw, strict=True):
        types.setdefault(child.digest, child.media_type)
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
        tag = tag_of_ref_name(name) if isinstance(name, str) else None
        if tag is not None:
            info = ManifestInfo(child.digest, child.media_type, child.size)
            add_tag(tags, tag, info, label)
    return _Layout(label=label, root=real_root, tags=tags, types=types)


class OciLayoutSource(LocalSource[_Layout]):
    """Every `oci:PATH` source; PATH is resolved against `base` (the config's directory)."""

    scheme = OCI_LAYOUT

    def _load(self, path: Path, label: str) -> _Layout:
        return _load_layout(path, label)

    def _tagged(self, layout: _Layout, tag: str) -> ManifestInfo:
        info = layout.tags.get(tag)
        if info is None:
            offered = ", ".join(sorted(layout.tags)[:10]) or "none"
            raise NotFoundError(
                f"{layout.label}: no tag {tag!r} (no {REF_NAME} annotation names it)",
                hint=f"the layout's tags: {offered}",
            )
        return info

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        layout = self._open(repo)
        if is_digest(ref):
            fetched = self.get_manifest(repo, ref)
            return ManifestInfo(fetched.digest, fetched.media_type, len(fetched.data))
        return self._tagged(layout, ref)

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        layout = self._open(repo)
        digest = validate_digest(ref) if is_digest(ref) else self._tagged(layout, ref).digest
        if expected_digest is not None and validate_digest(expected_digest) != digest:
            raise IntegrityError(
                f"{layout.label}: {ref} is {digest}, not the expected {expected_digest}",
                hint="the layout changed since `registrish lock`; run `registrish lock --upgrade`",
            )
        self._reads.bump()
        with layout.blob(digest).open("rb") as f:
            data = read_capped(f, MAX_MANIFEST_BYTES, f"{layout.label}: manifest {digest}")
        actual = sha256_digest(data)
        if actual != digest:
            raise IntegrityError(
                f"{layout.label}: manifest blob {digest} hashes to {actual}",
                hint="the layout is corrupt; copy it again",
            )
        return FetchedManifest(data, sniff_manifest_type(data, layout.types.get(digest)), digest)

    def fetch_blob(self, blob: BlobRequest) -> None:
        layout = self._open(blob.repo)
        validate_digest(blob.digest)
        self._reads.bump()
        with layout.blob(blob.digest).open("rb") as src:
            copy_verified(src, blob, layout.label)

    def close(self) -> None:
        """Nothing stays open between calls."""
