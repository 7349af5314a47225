"""The on-disk tree: observe its state, and write its files safely.

`scan` turns the tree into a `TreeState` value (what exists, sizes, inodes, and the
bytes of every small file) that the pure planner compares with the lock. Blobs are
only stat'ed unless `verify=True`; manifest files are always hashed because they are
small and a tag moved to a manifest of equal size must still be noticed.

The writers below are the only way sync and gc change the tree: every write is a
temp file in `<store>/tmp` (same filesystem), fsynced, then renamed. Given a
`DirSyncs` batch they defer the directory fsync that makes the rename durable to the
batch's flush (sync flushes once per phase); without one they fsync it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntegrityError, LocalError
from ..fsutil import DirSyncs, FileStamp, VerifiedFile, atomic_write_bytes, link_or_copy, sync_dir
from ..oci.documents import canonical_json as canonical_json  # re-exported: gc, desired
from ..oci.manifest import MAX_MANIFEST_BYTES, sha256_digest
from ..oci.reference import is_digest
from .layout import Layout, parse_rel_path, split_twin

_CHUNK = 1 << 20
#: Documents (ping, catalog, tags/list, referrers) larger than this are not read into memory.
MAX_DOC_BYTES = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 digest, size) of a file, streamed in 1 MiB chunks (flat memory)."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


@dataclass(frozen=True, slots=True)  # one per file of the tree: 700,000 at 100,000 tags
class FileInfo:
    size: int
    dev: int
    ino: int

    def same_inode(self, other: FileInfo | None) -> bool:
        return other is not None and (self.dev, self.ino) == (other.dev, other.ino)


@dataclass(frozen=True)
class TreeState:
    """What the tree holds now. A value: the planner never touches the disk."""

    #: Every regular file under `v2/`, by `/`-separated path relative to the root.
    files: Mapping[str, FileInfo] = field(default_factory=dict)
    #: rel path of each manifest file (exact or twin) → sha256 of its bytes.
    manifest_digests: Mapping[str, str] = field(default_factory=dict)
    #: Manifest bytes found anywhere in the tree, by their (computed, hence verified) digest.
    manifest_bytes: Mapping[str, bytes] = field(default_factory=dict)
    #: Bytes of small documents: ping, catalog, tags/list, referrers.
    docs: Mapping[str, bytes] = field(default_factory=dict)
    #: The content store: digest → file info.
    store: Mapping[str, FileInfo] = field(default_factory=dict)
    #: Store blobs whose bytes do not hash to their name (only known with `verify`).
    bad_store: frozenset[str] = frozenset()
    #: `v2/.../blobs/...` files (copies, not store hardlinks) that failed a re-hash.
    bad_files: frozenset[str] = frozenset()
    #: Files in `<store>/tmp` → size (partial downloads, leftovers).
    tmp: Mapping[str, int] = field(default_factory=dict)
    #: Whether blobs were re-hashed (`--verify`).
    verified: bool = False


def _is_doc(rel: str) -> bool:
    if rel in (Layout.rel_ping(), Layout.rel_catalog()):
        return True
    parsed = parse_rel_path(rel)
    return parsed is not None and parsed[1] in ("tags", "referrers")


def _section(rel: str) -> str | None:
    parsed = parse_rel_path(rel)
    return parsed[1] if parsed is not None else None


class _StoreByStat(Mapping[str, FileInfo]):
    """The content store, each blob stat'ed when asked for: a sync scoped to a few
    repositories asks for their blobs only. Iterating lists the whole store."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def __getitem__(self, digest: str) -> FileInfo:
        if not is_digest(digest):
            raise KeyError(digest)
        try:
            st = os.lstat(self._dir / digest.removeprefix("sha256:"))
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(digest) from None
        if not stat.S_ISREG(st.st_mode):
            raise KeyError(digest)
        return FileInfo(st.st_size, st.st_dev, st.st_ino)

    def _all(self) -> list[str]:
        if not self._dir.is_dir():
            return []
        return [d for e in os.scandir(self._dir) if (d := f"sha256:{e.name}") in self]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _walk_roots(layout: Layout, names: frozenset[str] | None) -> list[Path]:
    """`v2/`, or the directories of `names` (a nested repository's once: its parent's
    walk covers it)."""
    if names is None:
        return [layout.v2]
    dirs = {layout.repo_dir(n) for n in names}
    return sorted(d for d in dirs if not any(p in dirs for p in d.parents))


def scan(layout: Layout, *, verify: bool = False, names: frozenset[str] | None = None) -> TreeState:
    """Observe the tree under `layout.root` (an absent root is an empty tree). With
    `names`, only those repositories' files, the ping and the catalog are read, and the
    store is stat'ed blob by blob when the planner asks (not with `verify`)."""
    files: dict[str, FileInfo] = {}
    manifest_digests: dict[str, str] = {}
    manifest_bytes: dict[str, bytes] = {}
    docs: dict[str, bytes] = {}
    store: dict[str, FileInfo] = {}
    bad_store: set[str] = set()
    blob_files: list[str] = []

    store_dir = layout.state / "blobs" / "sha256"
    lazy_store = names is not None and not verify
    if not lazy_store and store_dir.is_dir():
        for entry in os.scandir(store_dir):
            digest = f"sha256:{entry.name}"
            if not is_digest(digest) or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            store[digest] = FileInfo(st.st_size, st.st_dev, st.st_ino)
            if verify and hash_file(Path(entry.path)) != (digest, st.st_size):
                bad_store.add(digest)

    walked = _walk_roots(layout, names)
    if names is not None:  # the top-level documents a scoped plan compares
        for rel in (Layout.rel_ping(), Layout.rel_catalog()):
            with contextlib.suppress(OSError):
                st = os.lstat(layout.path(rel))
                if stat.S_ISREG(st.st_mode):
                    files[rel] = FileInfo(st.st_size, st.st_dev, st.st_ino)
                    docs[rel] = layout.path(rel).read_bytes()
    for top in walked:
        for dirpath, _dirnames, filenames in os.walk(top):
            for filename in filenames:
                path = Path(dirpath) / filename
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue  # never follow symlinks out of the tree
                rel = path.relative_to(layout.root).as_posix()
                parsed = parse_rel_path(rel)
                if names is not None and (parsed is None or parsed[0] not in names):
                    continue  # a nested repository out of scope
                files[rel] = FileInfo(st.st_size, st.st_dev, st.st_ino)
                section = _section(rel)
                if section == "manifests" and st.st_size <= MAX_MANIFEST_BYTES:
                    data = path.read_bytes()
                    digest = sha256_digest(data)
                    manifest_digests[rel] = digest
                    manifest_bytes.setdefault(digest, data)
                elif section == "blobs":
                    blob_files.append(rel)
                elif _is_doc(rel) and st.st_size <= MAX_DOC_BYTES:
                    docs[rel] = path.read_bytes()

    bad_files: set[str] = set()
    if verify:
        for rel in blob_files:
            parsed = parse_rel_path(rel)
            assert parsed is not None
            digest = parsed[2]
            if files[rel].same_inode(store.get(digest)):
                continue  # the store check covered this inode
            if not is_digest(digest) or hash_file(layout.path(rel))[0] != digest:
                bad_files.add(rel)

    tmp: dict[str, int] = {}
    if layout.tmp.is_dir():
        for entry in os.scandir(layout.tmp):
            if entry.is_file(follow_symlinks=False):
                tmp[entry.name] = entry.stat(follow_symlinks=False).st_size

    return TreeState(
        files=files,
        manifest_digests=manifest_digests,
        manifest_bytes=manifest_bytes,
        docs=docs,
        store=_StoreByStat(store_dir) if lazy_store else store,
        bad_store=frozenset(bad_store),
        bad_files=frozenset(bad_files),
        tmp=tmp,
        verified=verify,
    )


def manifest_ref_of(rel: str) -> tuple[str, str, str | None] | None:
    """`v2/<name>/manifests/<file>` → (name, ref, twin media type or None)."""
    parsed = parse_rel_path(rel)
    if parsed is None or parsed[1] != "manifests":
        return None
    name, _, filename = parsed
    twin = split_twin(filename)
    if twin is not None:
        return name, twin[0], twin[1]
    return name, filename, None


# --- writers -------------------------------------------------------------------------------


def partial_path(layout: Layout, digest: str) -> Path:
    """Where a blob download streams to; a rerun after a kill resumes from it."""
    return layout.tmp / f"{layout.store_blob(digest).name}{PARTIAL_SUFFIX}"


def ensure_dirs(layout: Layout) -> None:
    """Create the store and `v2/`; refuse a store on another filesystem than the root
    (temp files are renamed into the tree and blobs hardlinked from the store)."""
    for directory in (layout.tmp, layout.state / "blobs" / "sha256", layout.v2):
        directory.mkdir(parents=True, exist_ok=True)
    if os.stat(layout.tmp).st_dev != os.stat(layout.v2).st_dev:
        raise LocalError(
            f"the content store {layout.state} is on another filesystem than the root "
            f"{layout.root} (files are renamed and hardlinked from one to the other)",
            hint="set [registry] store to a directory on the root's filesystem, outside the root",
        )


def _still_verified(src: Path, verified: VerifiedFile | None, digest: str, size: int) -> bool:
    """Whether `src` is, unchanged, the file an upstream verified while writing it.

    The registry client hashes every byte as it writes it through one handle, checks digest
    and size, fsyncs, and stamps the file (device, inode, size, mtime, ctime) from that
    handle. If `src` still has that stamp it holds exactly those bytes: nothing renamed
    another file over it and nothing wrote to it since (a write moves mtime and ctime; only
    this process, under the tree lock, writes to `<store>/tmp`). Re-hashing it would
    re-read and re-hash every byte (0.6 s of CPU per GiB, measured) to learn nothing new;
    `sync --verify` still re-hashes every stored blob. Anything else is hashed here."""
    return (
        verified is not None
        and (verified.digest, verified.size, verified.stamp.size) == (digest, size, size)
        and FileStamp.of(os.stat(src)) == verified.stamp
    )


def commit_blob(
    layout: Layout,
    src: Path,
    digest: str,
    size: int,
    *,
    verified: VerifiedFile | None = None,
    batch: DirSyncs | None = None,
) -> None:
    """Check a downloaded file against `digest` and `size`, then rename it into the store.

    The check is the upstream's own verification of this very file when `verified` still
    describes it (see `_still_verified`), else a full re-hash: nothing unverified reaches
    a final path whatever the transport. On a mismatch the file is deleted (a rerun
    downloads afresh) and IntegrityError raised.
    """
    if _still_verified(src, verified, digest, size):
        actual, actual_size = digest, size
    else:
        actual, actual_size = hash_file(src)
    if (actual, actual_size) != (digest, size):
        with contextlib.suppress(FileNotFoundError):
            src.unlink()
        raise IntegrityError(
            f"blob {digest}: downloaded {actual_size} bytes hashing to {actual}, "
            f"expected {size} bytes",
            hint="the upstream served wrong content; rerun `registrish sync` to retry",
        )
    os.chmod(src, 0o644)
    dest = layout.store_blob(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    sync_dir(dest.parent, batch)


def link_blob(layout: Layout, rel: str, digest: str, *, batch: DirSyncs | None = None) -> None:
    """Make `rel` the store's blob (hardlink, or a copy where links are impossible)."""
    link_or_copy(layout.store_blob(digest), layout.path(rel), tmp_dir=layout.tmp)
    sync_dir(layout.path(rel).parent, batch)


def write_manifest(
    layout: Layout,
    rel: str,
    twin_rel: str,
    data: bytes,
    stale_twins: Iterable[str] = (),
    *,
    batch: DirSyncs | None = None,
) -> None:
    """Write manifest bytes at `rel` and its typed twin as two links of one inode.

    Order matters for a puller: the new twin appears first, then the exact file is
    replaced atomically, then twins of an older kind go. Hosts that read either name see
    a complete old or a complete new manifest at every instant.
    """
    path, twin = layout.path(rel), layout.path(twin_rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    tmp = layout.tmp / f".m-{token}"
    tmp_twin = layout.tmp / f".m-{token}.twin"
    try:
        atomic_write_bytes(tmp, data, tmp_dir=layout.tmp, batch=batch)
        try:
            os.link(tmp, tmp_twin)
        except OSError:  # no hardlinks here: a second copy serves just as well
            atomic_write_bytes(tmp_twin, data, tmp_dir=layout.tmp, batch=batch)
        os.replace(tmp_twin, twin)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp_twin):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    for stale in stale_twins:
        with contextlib.suppress(FileNotFoundError):
            layout.path(stale).unlink()
    sync_dir(path.parent, batch)


def write_doc(layout: Layout, rel: str, data: bytes, *, batch: DirSyncs | None = None) -> None:
    layout.tmp.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.path(rel), data, tmp_dir=layout.tmp, batch=batch)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_empty_dirs(top: Path, *, keep: Path) -> list[Path]:
    """Remove empty directories under `top` bottom-up (never `keep` itself)."""
    removed: list[Path] = []
    if not top.is_dir():
        return removed
    for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
        directory = Path(dirpath)
        if directory == keep:
            continue
        try:
            directory.rmdir()
        except OSError:
            continue  # not empty
        removed.append(directory)
    return removed
