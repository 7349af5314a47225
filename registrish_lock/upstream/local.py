"""What the local sources (`oci_layout`, `docker_archive`) share: one parsed object per
path, counted reads, a verified copy into the tree, tag and media type rules.

Local paths are read-only inputs. Paths inside a layout are derived only from validated
digests and must not leave the layout through a symlink; an archive's member names are
looked up in the archive and never used as file system paths.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Generic, Protocol, TypeVar

from ..errors import IntegrityError, RegistrishError
from ..oci import mediatypes
from ..oci.reference import Reference, is_tag
from .protocols import BlobRequest, ManifestInfo
from .sink import Readable, open_sink

REF_NAME = "org.opencontainers.image.ref.name"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
#: `manifest.json` of an archive and image configs: small documents, read whole.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
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


def read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LocalSourceError(f"{what} is larger than {limit} bytes")
    return data


def copy_verified(src: Readable, blob: BlobRequest, label: str) -> None:
    """Copy `blob.size` bytes into `blob.dest` (from scratch: local reads are cheap),
    hashing them; on a size or digest mismatch the destination is deleted and
    `IntegrityError` raised, naming the blob after `label` (the layout or archive).
    Checked before `finish()`, which commits a sink that is an upload."""
    digest, size = blob.digest, blob.size
    what = f"{label}: blob {digest}"
    sink = open_sink(blob, what)
    try:
        sink.copy_from(src)
        extra = src.read(1)
        if sink.written != size or extra or sink.digest != digest:
            raise IntegrityError(
                f"{what}: {'more than ' if extra else ''}{sink.written} bytes hashing to "
                f"{sink.digest}, expected {size} bytes with digest {digest}",
                hint="the local source is corrupt or changed since `registrish lock`; "
                "recreate it, or run `registrish lock --upgrade`",
            )
        sink.finish()
    except BaseException:
        sink.discard()
        raise


def sniff_manifest_type(data: bytes, fallback: str | None) -> str:
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


def add_tag(tags: dict[str, ManifestInfo], tag: str, info: ManifestInfo, where: str) -> None:
    previous = tags.get(tag)
    if previous is not None and previous.digest != info.digest:
        raise LocalSourceError(
            f"{where}: tag {tag!r} names two images ({previous.digest} and {info.digest})",
            hint="keep one image per tag in a local source",
        )
    tags[tag] = info


class _Tagged(Protocol):
    """A parsed local source: a layout or an archive, each with its tags."""

    @property
    def tags(self) -> Mapping[str, ManifestInfo]: ...


_Parsed = TypeVar("_Parsed", bound=_Tagged)
#: Parsed sources kept (least recently used ones are parsed again when asked for).
KEEP_PARSED = 8


class LocalSource(Generic[_Parsed]):
    """What both local source kinds share: the scheme they serve, a base directory that
    paths are relative to, one parsed object per path (built once even when threads race
    for it), and a count of files read, the local analogue of upstream requests."""

    scheme: str

    def __init__(self, base: Path) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._parsed: dict[Path, _Parsed] = {}
        self._reads = Counter()

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
            parsed = self._parsed.pop(path, None)
            if parsed is None:
                parsed = self._load(path, repo.repository_ref)
                # The most recently used ones only: a sync reads repository after
                # repository, and 100 parsed 1,000-tag indexes held 60 MB.
                while len(self._parsed) >= KEEP_PARSED:
                    del self._parsed[next(iter(self._parsed))]
            self._parsed[path] = parsed  # last: the most recently used
            return parsed

    def list_tags(self, repo: Reference) -> list[str]:
        return sorted(self._open(repo).tags)


class Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def bump(self) -> None:
        with self._lock:
            self.value += 1
