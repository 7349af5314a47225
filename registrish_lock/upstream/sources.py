"""Local sources for air-gapped work, behind the same upstream protocol as
`registry.RegistryClient` (`list_tags`, `head_manifest`, `get_manifest`, `fetch_blob`).

- `oci:PATH` is an OCI image layout: its tags are the `org.opencontainers.image.ref.name`
  annotations of `index.json`; manifests and blobs are `blobs/sha256/<hex>`, read as they are.
- `docker-archive:FILE` is the output of `docker save` (or `skopeo copy … docker-archive:`):
  `manifest.json` names a config and layer tars per image and its `RepoTags`. An archive holds
  no registry manifest, so one is synthesised: Docker v2 schema 2 with the layers exactly as
  stored (uncompressed tars are `application/vnd.docker.image.rootfs.diff.tar`, their digests
  equal the config's `diff_ids`). Nothing is recompressed: gzip output depends on the zlib
  build, so only the stored bytes give a lock that is byte-identical everywhere.

`SourceRouter` implements the protocol over every kind of source, dispatching on
`Reference.registry`; the registry client is created only when a registry source is asked.

Local paths are read-only inputs. Paths inside a layout are derived only from validated
digests and must not leave the layout through a symlink; an archive's member names are
looked up in the archive and never used as file system paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Protocol, TypeVar

from ..console import Console
from ..errors import IntegrityError, NotFoundError, RegistrishError
from ..fsutil import VerifiedFile
from ..lock.config import Config
from ..lock.discovery import ReferrersUpstream
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, Descriptor, parse_manifest, sha256_digest
from ..oci.reference import (
    DOCKER_ARCHIVE,
    OCI_LAYOUT,
    Reference,
    digest_hex,
    is_digest,
    is_tag,
    validate_digest,
)
from .protocols import (
    DEFAULT_JOBS,
    FetchedLike,
    FetchedManifest,
    ManifestBudget,
    ManifestInfo,
    ManifestInfoLike,
    Upstream,
)

REF_NAME = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
#: `manifest.json` of an archive and image configs: small documents, read whole.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class LocalSourceError(RegistrishError):
    """A local source is missing or is not what its scheme says (bad input: exit 2)."""


# --- shared helpers ------------------------------------------------------------------------


def tag_of_ref_name(value: str) -> str | None:
    """The tag an annotation or a `RepoTags` entry names: `3.20`, or the `:3.20` of a full
    reference such as `docker.io/library/alpine:3.20`; None when it names no valid tag."""
    if is_tag(value):
        return value
    colon = value.rfind(":")
    if colon > value.rfind("/") and "@" not in value:
        tag = value[colon + 1 :]
        return tag if is_tag(tag) else None
    return None


def _read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LocalSourceError(f"{what} is larger than {limit} bytes")
    return data


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _copy_verified(
    src: _Readable,
    *,
    digest: str,
    size: int,
    dest: Path,
    on_bytes: Callable[[int], None] | None,
    what: str,
) -> None:
    """Copy `size` bytes into `dest` (from scratch: local reads are cheap), hashing them;
    on a size or digest mismatch `dest` is deleted and `IntegrityError` raised."""
    report = on_bytes or (lambda _n: None)
    hasher = hashlib.sha256()
    written = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            while written < size:
                chunk = src.read(min(_CHUNK, size - written))
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                report(len(chunk))
            extra = src.read(1)
            out.flush()
            os.fsync(out.fileno())
        actual = "sha256:" + hasher.hexdigest()
        if written != size or extra or actual != digest:
            raise IntegrityError(
                f"{what}: {'more than ' if extra else ''}{written} bytes hashing to {actual}, "
                f"expected {size} bytes with digest {digest}",
                hint="the local source is corrupt or changed since `registrish lock`; "
                "recreate it, or run `registrish lock --upgrade`",
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _sniff_manifest_type(data: bytes, fallback: str | None) -> str:
    """A manifest's own `mediaType`, else the descriptor's, else its shape (OCI allows
    omitting `mediaType`); `parse_manifest` validates the result later."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared in mediatypes.MANIFEST_TYPES:
        return declared
    if fallback in mediatypes.MANIFEST_TYPES:
        assert fallback is not None
        return fallback
    if isinstance(doc, dict) and "manifests" in doc:
        return mediatypes.OCI_INDEX
    return mediatypes.OCI_MANIFEST


def _add_tag(tags: dict[str, ManifestInfo], tag: str, info: ManifestInfo, where: str) -> None:
    previous = tags.get(tag)
    if previous is not None and previous.digest != info.digest:
        raise LocalSourceError(
            f"{where}: tag {tag!r} names two images ({previous.digest} and {info.digest})",
            hint="keep one image per tag in a local source",
        )
    tags[tag] = info


_Parsed = TypeVar("_Parsed")


class _LocalSource(Generic[_Parsed]):
    """What both local source kinds share: the scheme they serve, a base directory that
    paths are relative to, one parsed object per path (built once even when threads race
    for it), and a count of files read, the local analogue of upstream requests."""

    scheme: str

    def __init__(self, base: Path) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._parsed: dict[Path, _Parsed] = {}
        self._reads = _Counter()

    @property
    def request_count(self) -> int:
        return self._reads.value

    def _load(self, path: Path, label: str) -> _Parsed:
        raise NotImplementedError

    def _open(self, repo: Reference) -> _Parsed:
        if repo.registry != self.scheme:
            raise ValueError(f"not a {self.scheme}: source: {repo}")
        path = self.base / repo.repository
        with self._lock:
            if path not in self._parsed:
                self._parsed[path] = self._load(path, repo.repository_ref)
            return self._parsed[path]


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def bump(self) -> None:
        with self._lock:
            self.value += 1


# --- OCI image layouts ----------------------------------------------------------------------


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
            data = _read_capped(f, MAX_MANIFEST_BYTES, f"{label}: index.json")
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
            _add_tag(tags, tag, info, label)
    return _Layout(label=label, root=real_root, tags=tags, types=types)


class OciLayoutSource(_LocalSource[_Layout]):
    """Every `oci:PATH` source; PATH is resolved against `base` (the config's directory)."""

    scheme = OCI_LAYOUT

    def _load(self, path: Path, label: str) -> _Layout:
        return _load_layout(path, label)

    def list_tags(self, repo: Reference) -> list[str]:
        return sorted(self._open(repo).tags)

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
            data = _read_capped(f, MAX_MANIFEST_BYTES, f"{layout.label}: manifest {digest}")
        actual = sha256_digest(data)
        if actual != digest:
            raise IntegrityError(
                f"{layout.label}: manifest blob {digest} hashes to {actual}",
                hint="the layout is corrupt; copy it again",
            )
        return FetchedManifest(data, _sniff_manifest_type(data, layout.types.get(digest)), digest)

    def fetch_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        dest: Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        layout = self._open(repo)
        validate_digest(digest)
        self._reads.bump()
        with layout.blob(digest).open("rb") as src:
            _copy_verified(
                src,
                digest=digest,
                size=size,
                dest=dest,
                on_bytes=on_bytes,
                what=f"{layout.label}: blob {digest}",
            )

    def close(self) -> None:
        """Nothing stays open between calls."""


# --- docker save archives -------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """Where a blob's bytes lie in the archive file (a regular member, links resolved)."""

    offset: int
    size: int


@dataclass(frozen=True)
class _Archive:
    label: str
    path: Path
    tags: Mapping[str, ManifestInfo]
    manifests: Mapping[str, bytes]
    blobs: Mapping[str, _Member]


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


def _hash_member(f: IO[bytes], member: _Member) -> tuple[str, bytes]:
    """(digest, first bytes) of a member's data."""
    f.seek(member.offset)
    hasher = hashlib.sha256()
    head = b""
    left = member.size
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise IntegrityError(f"archive member at offset {member.offset} is truncated")
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
    blobs: dict[str, _Member] = {}
    with tar, path.open("rb") as f:

        def member(name: object) -> _Member:
            if not isinstance(name, str):
                raise LocalSourceError(f"{label}: manifest.json names a non-string member")
            info = _regular_member(tar, name, label)
            return _Member(info.offset_data, info.size)

        def read_doc(name: object) -> bytes:
            m = member(name)
            if m.size > MAX_DOCUMENT_BYTES:
                raise LocalSourceError(f"{label}: {name} is larger than {MAX_DOCUMENT_BYTES} bytes")
            f.seek(m.offset)
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
                    _add_tag(tags, tag, info, label)
    return _Archive(label=label, path=path, tags=tags, manifests=manifests, blobs=blobs)


class DockerArchiveSource(_LocalSource[_Archive]):
    """Every `docker-archive:FILE` source; FILE is resolved against `base`. An archive is
    read (and every layer hashed) once per process, then served by offset."""

    scheme = DOCKER_ARCHIVE

    def _load(self, path: Path, label: str) -> _Archive:
        return _load_archive(path, label)

    def list_tags(self, repo: Reference) -> list[str]:
        return sorted(self._open(repo).tags)

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

    def fetch_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        dest: Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        archive = self._open(repo)
        validate_digest(digest)
        member = archive.blobs.get(digest)
        if member is None:
            raise NotFoundError(
                f"{archive.label}: no blob {digest}",
                hint="the archive changed since `registrish lock`; run `registrish lock --upgrade`",
            )
        self._reads.bump()
        with archive.path.open("rb") as f:
            f.seek(member.offset)
            _copy_verified(
                _Window(f, member.size),
                digest=digest,
                size=size,
                dest=dest,
                on_bytes=on_bytes,
                what=f"{archive.label}: blob {digest}",
            )

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


# --- routing --------------------------------------------------------------------------------


class SourceRouter:
    """The upstream protocol over registries and local sources alike: each call goes to the
    source `repo.registry` names. The registry client is made on first use, so a config of
    local sources only never creates one."""

    def __init__(self, *, base: Path, registry: Callable[[], Upstream]) -> None:
        self._registry_factory = registry
        self._registry: Upstream | None = None
        self._lock = threading.Lock()
        self._oci = OciLayoutSource(base)
        self._archives = DockerArchiveSource(base)

    def _pick(self, repo: Reference) -> Upstream:
        return self._source(repo.registry)

    def _source(self, registry: str) -> Upstream:
        if registry == OCI_LAYOUT:
            return self._oci
        if registry == DOCKER_ARCHIVE:
            return self._archives
        with self._lock:
            if self._registry is None:
                self._registry = self._registry_factory()
            return self._registry

    @property
    def request_count(self) -> int:
        remote = self._registry.request_count if self._registry is not None else 0
        return remote + self._oci.request_count + self._archives.request_count

    def list_tags(self, repo: Reference) -> list[str]:
        return self._pick(repo).list_tags(repo)

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfoLike:
        return self._pick(repo).head_manifest(repo, ref)

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedLike:
        return self._pick(repo).get_manifest(repo, ref, expected_digest=expected_digest)

    def fetch_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        dest: Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VerifiedFile | None:
        return self._pick(repo).fetch_blob(repo, digest, size, dest, on_bytes=on_bytes)

    def list_referrers(self, repo: Reference, digest: str) -> list[Descriptor] | None:
        """The registry's OCI referrers API; None (no API) for local sources, where the
        tag schemas (`sha256-<hex>`, `.sig` …) still work: they are plain tags."""
        source = self._pick(repo)
        if isinstance(source, ReferrersUpstream):
            return source.list_referrers(repo, digest)
        return None

    def plan_manifest_gets(self, registry: str, gets: int) -> None:
        """Local sources have no rate limit; a registry client may warn about its own."""
        source = self._source(registry)
        if isinstance(source, ManifestBudget):
            source.plan_manifest_gets(registry, gets)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> SourceRouter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_sources(config: Config, console: Console, *, jobs: int = DEFAULT_JOBS) -> SourceRouter:
    """The upstream for `config`'s images: each request goes to the image's source, a
    registry client being created (and httpx imported) only when a registry is used."""

    def registry_client() -> Upstream:
        from .registry import RegistryClient

        return RegistryClient(
            settings=config.registry_settings, console=console, max_connections_per_registry=jobs
        )

    return SourceRouter(base=config.path.parent, registry=registry_client)
