"""`docker-archive:FILE`, the output of `docker save` (or `skopeo copy … docker-archive:`):
`manifest.json` names a config and layer tars per image and its `RepoTags`. An archive holds
no registry manifest, so one is synthesised: Docker v2 schema 2 with the layers exactly as
stored (uncompressed tars are `application/vnd.docker.image.rootfs.diff.tar`, their digests
equal the config's `diff_ids`). Nothing is recompressed: gzip output depends on the zlib
build, so only the stored bytes give a lock that is byte-identical everywhere."""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import IntegrityError, NotFoundError
from ..oci import mediatypes
from ..oci.manifest import sha256_digest
from ..oci.reference import DOCKER_ARCHIVE, Reference, is_digest, validate_digest
from .local import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    MAX_DOCUMENT_BYTES,
    LocalSource,
    LocalSourceError,
    add_tag,
    copy_verified,
    tag_of_ref_name,
)
from .protocols import BlobRequest, FetchedManifest, ManifestInfo

_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class _Archive:
    label: str
    path: Path
    tags: Mapping[str, ManifestInfo]
    manifests: Mapping[str, bytes]
    #: Each blob's regular member (links resolved): its bytes lie at `offset_data`.
    blobs: Mapping[str, tarfile.TarInfo]


def _regular_member(tar: tarfile.TarFile, name: str, label: str) -> tarfile.TarInfo:
    """The regular file `name` denotes in the archive, following links inside it (docker
    and skopeo write `<id>/layer.tar` as a symlink to the layer)."""
    current = name
    for _ in range(16):
        try:
            member = tar.getmember(current)
        except KeyError:
            raise LocalSourceError(
                f"{label}: manifest.json names {name!r}, which the archive does not contain",
                hint="the archive is truncated or not from `docker save`",
            ) from None
        if member.issym():
            current = posixpath.normpath(
                posixpath.join(posixpath.dirname(member.name), member.linkname)
            )
        elif member.islnk():
            current = member.linkname
        elif member.isreg() and not member.issparse():
            return member
        else:
            break
    raise LocalSourceError(f"{label}: {name!r} is not a regular file in the archive")


def _hash_member(f: IO[bytes], member: tarfile.TarInfo) -> tuple[str, bytes]:
    """(digest, first bytes) of a member's data."""
    f.seek(member.offset_data)
    hasher = hashlib.sha256()
    head = b""
    left = member.size
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise IntegrityError(f"archive member at offset {member.offset_data} is truncated")
        head = head or chunk[:2]
        hasher.update(chunk)
        left -= len(chunk)
    return "sha256:" + hasher.hexdigest(), head


def synthesize_manifest(config: bytes, layers: Iterable[tuple[str, int, str]]) -> bytes:
    """The Docker v2 schema 2 manifest for a saved image: `layers` is (digest, size, media
    type) in order. Key order and 3-space indentation are docker's own, so the bytes (and the
    digest) depend only on the archive's content."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "size": len(config),
            "digest": sha256_digest(config),
        },
        "layers": [
            {"mediaType": media_type, "size": size, "digest": digest}
            for digest, size, media_type in layers
        ],
    }
    return json.dumps(doc, indent=3).encode()


def _strings(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _load_archive(path: Path, label: str) -> _Archive:
    if not path.is_file():
        raise LocalSourceError(
            f"{label}: no such file {path}", hint="the path is relative to the config file"
        )
    try:
        # plain tar only: members are read by offset; closed by the `with` below
        tar = tarfile.open(path, "r:")  # noqa: SIM115
    except tarfile.ReadError as exc:
        raise LocalSourceError(
            f"{label}: not an uncompressed tar archive ({exc})",
            hint="decompress it first (`gunzip`), or save it with `docker save -o FILE.tar`",
        ) from None
    tags: dict[str, ManifestInfo] = {}
    manifests: dict[str, bytes] = {}
    blobs: dict[str, tarfile.TarInfo] = {}
    with tar, path.open("rb") as f:

        def member(name: object) -> tarfile.TarInfo:
            if not isinstance(name, str):
                raise LocalSourceError(f"{label}: manifest.json names a non-string member")
            return _regular_member(tar, name, label)

        def read_doc(name: object) -> bytes:
            m = member(name)
            if m.size > MAX_DOCUMENT_BYTES:
                raise LocalSourceError(f"{label}: {name} is larger than {MAX_DOCUMENT_BYTES} bytes")
            f.seek(m.offset_data)
            return f.read(m.size)

        if "manifest.json" not in tar.getnames():
            raise LocalSourceError(
                f"{label}: no manifest.json: not a `docker save` archive",
                hint="create it with `docker save -o FILE.tar IMAGE:TAG` or "
                "`skopeo copy … docker-archive:FILE.tar:NAME:TAG`",
            )
        try:
            entries = json.loads(read_doc("manifest.json"))
        except ValueError as exc:
            raise LocalSourceError(f"{label}: manifest.json is not JSON: {exc}") from None
        if not isinstance(entries, list):
            raise LocalSourceError(f"{label}: manifest.json is not a list of images")
        for i, entry in enumerate(entries):
            where = f"{label}: manifest.json[{i}]"
            layers = _strings(entry.get("Layers")) if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or layers is None:
                raise LocalSourceError(f"{where}: needs 'Config' and a 'Layers' list")
            config = read_doc(entry.get("Config"))
            config_digest = sha256_digest(config)
            blobs[config_digest] = member(entry.get("Config"))
            try:
                diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(f"{where}: the image config has no rootfs.diff_ids") from None
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
                raise IntegrityError(
                    f"{where}: {len(layers)} layers but the config lists "
                    f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids"
                )
            described: list[tuple[str, int, str]] = []
            for name, diff_id in zip(layers, diff_ids, strict=True):
                m = member(name)
                digest, head = _hash_member(f, m)
                gzipped = head == _GZIP_MAGIC
                if not gzipped and digest != diff_id:
                    raise IntegrityError(
                        f"{where}: layer {name} hashes to {digest}, but the config says {diff_id}",
                        hint="the archive is corrupt; save it again",
                    )
                blobs[digest] = m
                described.append((digest, m.size, DOCKER_LAYER_GZIP if gzipped else DOCKER_LAYER))
            data = synthesize_manifest(config, described)
            digest = sha256_digest(data)
            manifests[digest] = data
            info = ManifestInfo(digest, mediatypes.DOCKER_MANIFEST, len(data))
            for repo_tag in _strings(entry.get("RepoTags")) or []:
                tag = tag_of_ref_name(repo_tag)
                if tag is not None:
                    add_tag(tags, tag, info, label)
    return _Archive(label=label, path=path, tags=tags, manifests=manifests, blobs=blobs)


class DockerArchiveSource(LocalSource[_Archive]):
    """Every `docker-archive:FILE` source; FILE is resolved against `base`. An archive is
    read (and every layer hashed) once per process, then served by offset."""

    scheme = DOCKER_ARCHIVE

    def _load(self, path: Path, label: str) -> _Archive:
        return _load_archive(path, label)

    def _digest(self, archive: _Archive, ref: str) -> str:
        if is_digest(ref):
            return ref
        info = archive.tags.get(ref)
        if info is None:
            raise NotFoundError(
                f"{archive.label}: no image tagged {ref!r} in its RepoTags",
                hint=f"the archive's tags: {', '.join(sorted(archive.tags)) or 'none'}",
            )
        return info.digest

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        fetched = self.get_manifest(repo, ref)
        return ManifestInfo(fetched.digest, fetched.media_type, len(fetched.data))

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        archive = self._open(repo)
        digest = self._digest(archive, ref)
        data = archive.manifests.get(digest)
        if data is None:
            raise NotFoundError(
                f"{archive.label}: no image with manifest {digest}",
                hint="the archive changed since `registrish lock`; run `registrish lock --upgrade`",
            )
        if expected_digest is not None and expected_digest != digest:
            raise IntegrityError(
                f"{archive.label}: {ref} is {digest}, not the expected {expected_digest}",
                hint="the archive changed since `registrish lock`; run `registrish lock --upgrade`",
            )
        self._reads.bump()
        return FetchedManifest(data, mediatypes.DOCKER_MANIFEST, digest)

    def fetch_blob(self, blob: BlobRequest) -> None:
        archive = self._open(blob.repo)
        validate_digest(blob.digest)
        member = archive.blobs.get(blob.digest)
        if member is None:
            raise NotFoundError(
                f"{archive.label}: no blob {blob.digest}",
                hint="the archive changed since `registrish lock`; run `registrish lock --upgrade`",
            )
        self._reads.bump()
        with archive.path.open("rb") as f:
            f.seek(member.offset_data)
            copy_verified(_Window(f, member.size), blob, archive.label)

    def close(self) -> None:
        """Nothing stays open between calls."""


class _Window:
    """At most `size` bytes of `f` from its current position (one archive member)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data
