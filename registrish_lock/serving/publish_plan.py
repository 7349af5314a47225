"""What publish uploads and deletes, decided without touching the bucket: the tree's
objects (`collect_objects`, with the metadata the route table prescribes) and the pure
diff against a bucket listing (`plan_publish`).

What counts as "unchanged" (the remote listing is all we look at, one LIST per 1000 keys):
- digest-addressed objects (blobs, manifests by digest) are immutable: same key and size;
- everything else (tags, tag lists, catalog, referrers, ping) is small and uploaded with a
  single PUT, so its ETag is the MD5 of its bytes: equal ETag means equal content. Where a
  store's ETag is no MD5 (SSE-KMS, a multipart upload by another tool) the object is
  re-uploaded every time: correct, only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from ..console import Console, human_bytes
from ..errors import ExitCode, RegistrishError
from ..tree.layout import PING_FILE, Layout, split_twin
from .routes import (
    BROWSE_DATA_DIR,
    BROWSE_REL,
    Kind,
    Miss,
    Policy,
    Target,
    classify,
    object_headers,
)
from .s3store import RemoteObject, S3Target

#: The key that answers `GET /v2/` (S3 serves a key ending in `/` for that URL path).
PING_KEY = "v2/"
_CHUNK = 1 << 20


class TreeError(RegistrishError):
    """The tree on disk is inconsistent (a manifest without its typed twin, …)."""

    exit_code = ExitCode.LOCAL


class Phase(IntEnum):
    """Upload order (deletes run in reverse)."""

    BLOBS = 0
    MANIFESTS = 1  # by digest
    REFERRERS = 2
    TAGS = 3
    TAG_LISTS = 4
    CATALOG = 5
    PING = 6
    BROWSE_DATA = 7  # the browse page's data files, before the page naming them
    BROWSE = 8  # the root's index.html, which links to everything else


_PHASE_OF_KIND = {
    Kind.BLOB: Phase.BLOBS,
    Kind.MANIFEST_DIGEST: Phase.MANIFESTS,
    Kind.REFERRERS: Phase.REFERRERS,
    Kind.MANIFEST_TAG: Phase.TAGS,
    Kind.TAGS_LIST: Phase.TAG_LISTS,
    Kind.CATALOG: Phase.CATALOG,
    Kind.PING: Phase.PING,
    Kind.BROWSE_DATA: Phase.BROWSE_DATA,
    Kind.BROWSE: Phase.BROWSE,
}


@dataclass(frozen=True, order=True)
class LocalObject:
    """One object the bucket must hold: its key (relative to the prefix), the tree file
    it comes from, and the metadata the route table prescribes."""

    phase: Phase
    key: str
    source: str  # tree path relative to the root
    size: int
    content_type: str
    cache_control: str
    #: Digest-addressed: the digest in its name (verified before upload). Else None.
    digest: str | None = None
    #: MD5 (hex) of the bytes of a mutable object, compared with the remote ETag.
    md5: str | None = None

    @property
    def immutable(self) -> bool:
        return self.digest is not None


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def collect_objects(
    layout: Layout, policy: Policy, console: Console | None = None
) -> list[LocalObject]:
    """Walk `v2/` (plus the browse page `index.html` and its `browse/` data files at the
    root) and describe every
    object to upload (sorted by phase, key).

    A manifest is published once, under its exact name, with the type its typed twin
    carries; the twins themselves, the content store, host configs and anything that is no
    registry path stay local. The ping file is published as `v2/` (what `GET /v2/`
    reads) and as `v2/index` (the index document of S3 website endpoints).
    Raises TreeError for a manifest without a (matching) twin.
    """
    result: list[LocalObject] = []
    manifests: dict[str, os.stat_result] = {}  # exact manifest rel → stat
    twins: dict[str, list[tuple[str, str, os.stat_result]]] = {}  # exact rel → (twin rel, type, st)
    if not layout.v2.is_dir():
        raise TreeError(f"{layout.v2}: no tree to publish", hint="run `registrish sync` first")
    for dirpath, dirnames, filenames in os.walk(layout.v2):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                continue  # never follow symlinks out of the tree
            rel = path.relative_to(layout.root).as_posix()
            twin = split_twin(filename)
            if twin is not None:
                exact = rel[: -len(filename)] + twin[0]
                twins.setdefault(exact, []).append((rel, twin[1], st))
                continue
            if rel == Layout.rel_ping():
                ctype, cache = object_headers(Kind.PING, policy, None)
                md5 = _md5_file(path)
                for key in (PING_KEY, rel):
                    result.append(
                        LocalObject(Phase.PING, key, rel, st.st_size, ctype, cache, md5=md5)
                    )
                continue
            target = classify(rel)
            if isinstance(target, Miss):
                if console is not None:
                    console.debug(f"publish: skipping {rel} (not a registry path)")
                continue
            if target.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
                manifests[rel] = st
                continue
            if target.kind not in _PHASE_OF_KIND:
                continue  # a route publish does not know yet: never guess its type
            result.append(_describe(target, rel, path, st.st_size, policy, None))
    browse = layout.path(BROWSE_REL)
    if browse.is_file() and not browse.is_symlink():
        target = classify(BROWSE_REL)
        assert isinstance(target, Target)
        result.append(_describe(target, BROWSE_REL, browse, browse.stat().st_size, policy, None))
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(layout.path(BROWSE_DATA_DIR)), key=lambda e: e.name):
            rel = f"{BROWSE_DATA_DIR}/{entry.name}"
            target = classify(rel)
            if isinstance(target, Target) and entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                result.append(_describe(target, rel, Path(entry.path), size, policy, None))
    for rel, st in manifests.items():
        target = classify(rel)
        assert isinstance(target, Target)
        # a crash between sync's renames may leave an old twin: the one sharing the exact
        # file's inode (or bytes) is the current one
        path = layout.path(rel)
        candidates = twins.get(rel, [])
        types = {
            media_type
            for twin_rel, media_type, tst in candidates
            if (tst.st_dev, tst.st_ino) == (st.st_dev, st.st_ino)
            or layout.path(twin_rel).read_bytes() == path.read_bytes()
        }
        if len(types) != 1:
            problem = "has no typed twin" if not types else "has twins of several types"
            raise TreeError(
                f"{path}: manifest {problem}, so its Content-Type is unknown",
                hint="run `registrish sync --verify` to repair the tree",
            )
        result.append(_describe(target, rel, path, st.st_size, policy, types.pop()))
    return sorted(result)


def _describe(
    target: Target, rel: str, path: Path, size: int, policy: Policy, media_type: str | None
) -> LocalObject:
    ctype, cache = object_headers(target.kind, policy, media_type)
    phase = _PHASE_OF_KIND[target.kind]
    if target.kind in (Kind.BLOB, Kind.MANIFEST_DIGEST):
        return LocalObject(phase, rel, rel, size, ctype, cache, digest=target.ref)
    return LocalObject(phase, rel, rel, size, ctype, cache, md5=_md5_file(path))


@dataclass(frozen=True)
class Upload:
    obj: LocalObject
    reason: str  # "new", "changed" or "forced"


def _delete_rank(key: str) -> int:
    """Where a remote key goes in the delete order: tags and lists before manifests
    before blobs; unknown keys (not ours) last."""
    if key == PING_KEY or key == f"v2/{PING_FILE}":
        return len(Phase) - 1 - Phase.PING
    target = classify(key)
    if isinstance(target, Miss) or target.kind not in _PHASE_OF_KIND:
        return len(Phase)
    return len(Phase) - 1 - _PHASE_OF_KIND[target.kind]


@dataclass(frozen=True)
class PublishPlan:
    uploads: tuple[Upload, ...]  # in upload order
    deletes: tuple[RemoteObject, ...]  # in delete order (empty without --delete)
    #: Remote objects the tree does not have, kept because --delete was not given.
    extra: tuple[RemoteObject, ...]
    unchanged: int
    unchanged_bytes: int

    @property
    def pending(self) -> bool:
        return bool(self.uploads or self.deletes)

    @property
    def upload_bytes(self) -> int:
        return sum(u.obj.size for u in self.uploads)

    @property
    def delete_bytes(self) -> int:
        return sum(d.size for d in self.deletes)

    def phases(self) -> list[tuple[Phase, list[Upload]]]:
        grouped: dict[Phase, list[Upload]] = {}
        for u in self.uploads:
            grouped.setdefault(u.obj.phase, []).append(u)
        return sorted(grouped.items())

    def describe(self, target: S3Target) -> list[str]:
        """What `--dry-run` prints, in execution order."""
        lines = [
            f"Would upload {len(self.uploads)} objects ({human_bytes(self.upload_bytes)}) "
            f"to {target}; {self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)})"
        ]
        for phase, uploads in self.phases():
            size = sum(u.obj.size for u in uploads)
            lines.append(f"  {phase.name.lower()}: {len(uploads)} ({human_bytes(size)})")
            lines += [
                f"    would upload {u.obj.key} ({human_bytes(u.obj.size)}, {u.reason}, "
                f"{u.obj.content_type})"
                for u in uploads
            ]
        if self.deletes:
            lines.append(
                f"Would delete {len(self.deletes)} objects ({human_bytes(self.delete_bytes)})"
            )
            lines += [f"    would delete {d.key}" for d in self.deletes]
        elif self.extra:
            lines.append(
                f"{len(self.extra)} objects under the prefix are not in the tree "
                "(kept; --delete removes them)"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "upload": [
                {
                    "key": u.obj.key,
                    "size": u.obj.size,
                    "reason": u.reason,
                    "phase": u.obj.phase.name.lower(),
                    "content_type": u.obj.content_type,
                    "cache_control": u.obj.cache_control,
                }
                for u in self.uploads
            ],
            "upload_bytes": self.upload_bytes,
            "delete": [{"key": d.key, "size": d.size} for d in self.deletes],
            "delete_bytes": self.delete_bytes,
            "extra": len(self.extra),
            "unchanged": self.unchanged,
            "unchanged_bytes": self.unchanged_bytes,
        }


def _same(obj: LocalObject, remote: RemoteObject) -> bool:
    if obj.immutable:
        return remote.size == obj.size
    return remote.etag == obj.md5


def plan_publish(
    local: Iterable[LocalObject],
    remote: Mapping[str, RemoteObject],
    *,
    delete: bool = False,
    force: bool = False,
) -> PublishPlan:
    """Pure diff of the tree's objects against the bucket listing (keys relative to the
    prefix)."""
    uploads: list[Upload] = []
    unchanged = unchanged_bytes = 0
    wanted: set[str] = set()
    for obj in sorted(local):
        wanted.add(obj.key)
        existing = remote.get(obj.key)
        if existing is None:
            uploads.append(Upload(obj, "new"))
        elif force:
            uploads.append(Upload(obj, "forced"))
        elif not _same(obj, existing):
            uploads.append(Upload(obj, "changed"))
        else:
            unchanged += 1
            unchanged_bytes += obj.size
    extra = sorted(
        (r for k, r in remote.items() if k not in wanted),
        key=lambda r: (_delete_rank(r.key), r.key),
    )
    return PublishPlan(
        uploads=tuple(uploads),
        deletes=tuple(extra) if delete else (),
        extra=tuple(extra),
        unchanged=unchanged,
        unchanged_bytes=unchanged_bytes,
    )
