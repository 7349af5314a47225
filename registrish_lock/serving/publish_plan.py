"""What publish uploads and deletes, decided without touching the tree or the bucket
(pure): the tree's objects from its observed state (`objects_in_tree`, with the metadata
the route table prescribes) and the diff against a bucket listing (`plan_publish`).

What counts as "unchanged" (the remote listing is all we look at, one LIST per 1000 keys):
- digest-addressed objects (blobs, manifests by digest) are immutable: same key and size;
- everything else (tags, tag lists, catalog, referrers, ping) is small and uploaded with a
  single PUT, so its ETag is the MD5 of its bytes: equal ETag means equal content. Where a
  store's ETag is no MD5 (SSE-KMS, a multipart upload by another tool) the object is
  re-uploaded every time: correct, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..bucket.client import RemoteObject
from ..bucket.target import S3Target
from ..console import human_bytes
from ..errors import ExitCode, RegistrishError
from ..tree.layout import PING_FILE, Layout, split_twin
from ..tree.state import TreeState
from .routes import (
    Kind,
    Miss,
    Policy,
    Target,
    classify,
    object_headers,
)

#: The key that answers `GET /v2/` (S3 serves a key ending in `/` for that URL path).
PING_KEY = "v2/"


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


def objects_in_tree(
    layout: Layout,
    state: TreeState,
    browse: Mapping[str, int],
    policy: Policy,
    md5_of: Callable[[str], str],
    on_skip: Callable[[str], None] | None = None,
) -> list[LocalObject]:
    """Every object to upload (sorted by phase, key), from the observed tree (`state`:
    its `v2/` files under `layout.root`) and the browse page's files (`browse`: `index.html` at the root and
    the `browse/` data files, rel → size). `md5_of(rel)`: the MD5 of a mutable object's
    bytes (the caller reads them); `on_skip(rel)`: a file that is no registry path.

    A manifest is published once, under its exact name, with the type its typed twin
    carries; the twins themselves, the content store, host configs, hidden directories
    and anything that is no registry path stay local. The ping file is published as
    `v2/` (what `GET /v2/` reads) and as `v2/index` (the index document of S3 website
    endpoints). Raises TreeError for a manifest without a (matching) twin.
    """
    result: list[LocalObject] = []
    manifests: list[str] = []  # exact manifest rels
    twins: dict[str, list[tuple[str, str]]] = {}  # exact rel → (twin rel, media type)
    for rel, info in sorted(state.files.items()):
        folder, _, filename = rel.rpartition("/")
        if any(part.startswith(".") for part in folder.split("/")):
            continue
        twin = split_twin(filename)
        if twin is not None:
            twins.setdefault(f"{folder}/{twin[0]}", []).append((rel, twin[1]))
            continue
        if rel == Layout.rel_ping():
            ctype, cache = object_headers(Kind.PING, policy, None)
            md5 = md5_of(rel)
            for key in (PING_KEY, rel):
                result.append(LocalObject(Phase.PING, key, rel, info.size, ctype, cache, md5=md5))
            continue
        target = classify(rel)
        if isinstance(target, Miss):
            if on_skip is not None:
                on_skip(rel)
            continue
        if target.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
            manifests.append(rel)
        elif target.kind in _PHASE_OF_KIND:  # a route publish does not know: never guess
            result.append(_describe(target, rel, info.size, policy, None, md5_of))
    for rel, size in sorted(browse.items()):
        target = classify(rel)
        if isinstance(target, Target) and target.kind in _PHASE_OF_KIND:
            result.append(_describe(target, rel, size, policy, None, md5_of))
    for rel in manifests:
        target = classify(rel)
        assert isinstance(target, Target)
        # a crash between sync's renames may leave an old twin: the one sharing the exact
        # file's inode (or bytes) is the current one
        info, digest = state.files[rel], state.manifest_digests.get(rel)
        types = {
            media_type
            for twin_rel, media_type in twins.get(rel, [])
            if info.same_inode(state.files[twin_rel])
            or (digest is not None and state.manifest_digests.get(twin_rel) == digest)
        }
        if len(types) != 1:
            problem = "has no typed twin" if not types else "has twins of several types"
            raise TreeError(
                f"{layout.path(rel)}: manifest {problem}, so its Content-Type is unknown",
                hint="run `registrish sync --verify` to repair the tree",
            )
        result.append(_describe(target, rel, info.size, policy, types.pop(), md5_of))
    return sorted(result)


def _describe(
    target: Target,
    rel: str,
    size: int,
    policy: Policy,
    media_type: str | None,
    md5_of: Callable[[str], str],
) -> LocalObject:
    ctype, cache = object_headers(target.kind, policy, media_type)
    phase = _PHASE_OF_KIND[target.kind]
    if target.kind in (Kind.BLOB, Kind.MANIFEST_DIGEST):
        return LocalObject(phase, rel, rel, size, ctype, cache, digest=target.ref)
    return LocalObject(phase, rel, rel, size, ctype, cache, md5=md5_of(rel))


@dataclass(frozen=True)
class Upload:
    obj: LocalObject
    reason: str  # "new", "changed" or "forced"


@dataclass(frozen=True)
class Copy:
    """A blob key made by a server-side copy of `source` (relative to the prefix), a key
    of the same digest either uploaded earlier in the run or unchanged in the bucket."""

    obj: LocalObject
    reason: str  # as Upload's
    source: str


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
    #: Blob keys copied inside the bucket once the blob uploads are done (before the
    #: manifests), instead of sending a digest's bytes again.
    copies: tuple[Copy, ...] = ()

    @property
    def pending(self) -> bool:
        return bool(self.uploads or self.copies or self.deletes)

    @property
    def upload_bytes(self) -> int:
        return sum(u.obj.size for u in self.uploads)

    @property
    def copy_bytes(self) -> int:
        return sum(c.obj.size for c in self.copies)

    @property
    def delete_bytes(self) -> int:
        return sum(d.size for d in self.deletes)

    def phases(self) -> list[tuple[Phase, list[Upload]]]:
        """The uploads by phase, in order; the blob phase is there whenever there are
        copies (made right after its uploads), even with nothing to upload."""
        grouped: dict[Phase, list[Upload]] = {Phase.BLOBS: []} if self.copies else {}
        for u in self.uploads:
            grouped.setdefault(u.obj.phase, []).append(u)
        return sorted(grouped.items())

    def describe(self, target: S3Target) -> list[str]:
        """What `--dry-run` prints, in execution order."""
        lines = [
            f"Would upload {len(self.uploads)} objects ({human_bytes(self.upload_bytes)}) "
            f"to {target}; "
            + (
                f"copy {len(self.copies)} in the bucket ({human_bytes(self.copy_bytes)}); "
                if self.copies
                else ""
            )
            + f"{self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)})"
        ]
        for phase, uploads in self.phases():
            size = sum(u.obj.size for u in uploads)
            lines.append(f"  {phase.name.lower()}: {len(uploads)} ({human_bytes(size)})")
            lines += [
                f"    would upload {u.obj.key} ({human_bytes(u.obj.size)}, {u.reason}, "
                f"{u.obj.content_type})"
                for u in uploads
            ]
            if phase == Phase.BLOBS:
                lines += [
                    f"    would copy {c.obj.key} from {c.source} "
                    f"({human_bytes(c.obj.size)}, {c.reason})"
                    for c in self.copies
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
            "copy": [
                {"key": c.obj.key, "source": c.source, "size": c.obj.size, "reason": c.reason}
                for c in self.copies
            ],
            "copy_bytes": self.copy_bytes,
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
    prefix). A blob's bytes are sent once: its other keys are copies (`_share_blobs`)."""
    uploads: list[Upload] = []
    unchanged = unchanged_bytes = 0
    wanted: set[str] = set()
    trusted: dict[str, str] = {}  # digest → a blob key the bucket has (never with force)
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
            if obj.phase == Phase.BLOBS and obj.digest is not None:
                trusted.setdefault(obj.digest, obj.key)
    extra = sorted(
        (r for k, r in remote.items() if k not in wanted),
        key=lambda r: (_delete_rank(r.key), r.key),
    )
    sent, copies = _share_blobs(uploads, trusted)
    return PublishPlan(
        uploads=tuple(sent),
        deletes=tuple(extra) if delete else (),
        extra=tuple(extra),
        unchanged=unchanged,
        unchanged_bytes=unchanged_bytes,
        copies=tuple(copies),
    )


def _share_blobs(
    uploads: list[Upload], trusted: Mapping[str, str]
) -> tuple[list[Upload], list[Copy]]:
    """Split the uploads: the blob keys whose digest is already complete in the bucket
    (`trusted`: digest → an unchanged key) or uploaded earlier in this run become copies
    of that key; every other upload stays."""
    sources = dict(trusted)
    sent: list[Upload] = []
    copies: list[Copy] = []
    for u in uploads:
        digest = u.obj.digest
        if u.obj.phase != Phase.BLOBS or digest is None:
            sent.append(u)
        elif digest in sources:
            copies.append(Copy(u.obj, u.reason, sources[digest]))
        else:
            sources[digest] = u.obj.key
            sent.append(u)
    return sent, copies
