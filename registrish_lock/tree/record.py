"""The sync record: proof that the last `sync` completed for exactly these inputs, so the
next one with nothing to do skips scanning the tree and regenerating the host configs.

What it trusts, and what re-checks it:
- It is deleted (durably) before a sync writes anything and written last, after the host
  configs: an interrupted sync never leaves a record claiming completion.
- It is keyed by the sha256 of the lock's bytes and of the config's bytes, and by the
  registrish version: a lock edited by hand, or any config change, takes the full path.
- It holds the (inode, size, mtime) stamp of every directory of the tree (the root, `v2/`,
  each repository and its sections, the content store) and of every file at the top of the
  root, `v2/` and the hosts directory (host configs, browse page, ping, catalog). Adding,
  deleting or renaming any file of the tree changes its directory's mtime: the next sync
  sees the stamp differ and scans. A stamp within `RACY_NS` of the record's own mtime
  could hide a change made in the same clock tick (cf. git's "racy" index): for those the
  record also holds a witness taken before the stamp, the sha256 of the directory's
  (name, inode) listing or of the file's bytes, and trusts the stamp only while the
  witness still matches. So the sync right after a change is trusted too.
- Not seen: a file rewritten in place (same name, no rename) below the top level. Nothing
  registrish does writes that way; `sync --verify` (which ignores the record) and
  `check --local` re-read every file and find it.
- `synced.lock` beside it: the bytes of the lock it was written for (checked against
  `lock_sha256` before use). A sync of a changed lock whose record otherwise vouches for
  the tree (same config, no directory moved) reads only the repositories whose `[[tag]]`
  entries differ between the two (`delta.changed_names`); `--verify`/`--prune` read all.
- `clean`: whether the sync that wrote it also saw nothing for `gc` to collect (what its
  full scan held that the lock no longer reaches, minus what it removed itself). `gc` with
  a current, clean record has nothing to collect without reading the tree; a file added
  behind registrish's back moves its directory's stamp, so `gc` then scans.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .. import __version__
from ..fsutil import atomic_write_bytes, chunks_of, fsync_dir, replace_if_changed
from ..lock.lockfile import read_lock_bytes
from . import delta
from .layout import REPOSITORY_SECTIONS, Layout

RECORD_FORMAT = 1
#: Stamps younger than this against the record are not trusted (FAT's mtime is 2 s coarse).
RACY_NS = 2_000_000_000
_APPLIED_LOCK = "synced.lock"
Stamp = list[int] | None


def config_bytes(path: Path) -> bytes:
    """The config's bytes for the key, read before the config is parsed: a file changed in
    between then misses the record instead of vouching for what was not read."""
    return path.read_bytes() if path.is_file() else b""


def lock_file_sha256(path: Path) -> str:
    """The sha256 of the lock's bytes, read a block at a time (never held whole)."""
    hasher = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in chunks_of(handle):
                hasher.update(block)
    except OSError:
        return hashlib.sha256(read_lock_bytes(path)).hexdigest()  # or its one-line error
    return hasher.hexdigest()


def key_of(
    config_bytes: bytes, lock_sha256: str, layout: Layout, hosts_dir: Path
) -> dict[str, object]:
    """Everything a completed sync's output depends on besides the tree: the config's bytes,
    the lock's (by `lock_file_sha256`), and where the tree and host configs are (host
    configs name the absolute root: a workspace moved whole keeps every inode and mtime, yet
    its configs must be rewritten)."""
    return {
        "format": RECORD_FORMAT,
        "registrish": __version__,
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "lock_sha256": lock_sha256,
        "root": str(layout.root.resolve()),
        "hosts_dir": str(hosts_dir.resolve()),
    }


def _stamp(path: Path) -> Stamp:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode]


def watched(layout: Layout, names: Iterable[str], hosts_dir: Path) -> list[Path]:
    """Every directory of the tree and the top-level files where hosts and sync write."""
    root = Layout(layout.root.resolve())  # stamps by absolute path, whatever the cwd
    layout, hosts_dir = root, hosts_dir.resolve()
    dirs = {layout.root, layout.v2, layout.state / "blobs" / "sha256", hosts_dir}
    dirs.add(layout.root / "browse")  # the browse page's data files (serving.browse_page)
    for name in names:
        repo = layout.repo_dir(name)
        dirs.update(p for p in repo.parents if p.is_relative_to(layout.v2))
        dirs.add(repo)
        dirs.update(repo / s for s in REPOSITORY_SECTIONS)
    files: set[Path] = set()
    for top in (layout.root, layout.v2, hosts_dir):
        with contextlib.suppress(OSError):
            files.update(Path(e.path) for e in os.scandir(top) if e.is_file(follow_symlinks=False))
    return sorted(dirs | files)


def invalidate(layout: Layout) -> None:
    """Delete the record durably, before the tree is changed."""
    path = layout.sync_record
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def _witness(path: Path) -> str | None:
    """What a same-tick change would still alter: a directory's (name, inode) listing
    (scandir: no stat per entry), a file's bytes. The listing is hashed in the order the
    filesystem gives it, not sorted (no list of 200,000 entries): an unchanged directory
    lists the same way, and a listing in another order only costs a scan of the tree."""
    h = hashlib.sha256()
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            with os.scandir(path) as entries:
                for e in entries:
                    h.update(f"{e.name}\0{e.inode()}\n".encode())
        else:
            h.update(path.read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def write(
    layout: Layout,
    key: dict[str, object],
    lock_config_hash: str,
    paths: Iterable[Path],
    *,
    clean: bool = False,
) -> None:
    """Record the tree as complete for `key` (the last step of a sync); `clean` when it
    also holds nothing the lock does not reach."""
    racy_from = time.time_ns() - RACY_NS
    stamps: dict[str, Stamp] = {}
    witnesses: dict[str, str | None] = {}
    for path in paths:
        # Before the stamp (a change in between shows in one), and only for a path that
        # looks young: the store's listing is 200,000 names at 100,000 tags (63 MiB and
        # 1.3 s). One that turns young meanwhile is recorded without a witness: distrusted.
        first = _stamp(path)
        young = first is not None and first[2] >= racy_from
        witness = _witness(path) if young else None
        stamp = stamps[str(path)] = _stamp(path)
        if stamp is not None and stamp[2] >= racy_from:
            witnesses[str(path)] = witness
    doc = {
        **key,
        "lock_config_hash": lock_config_hash,
        "clean": clean,
        "stamps": stamps,
        "witnesses": witnesses,
    }
    layout.tmp.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    atomic_write_bytes(layout.sync_record, data, tmp_dir=layout.tmp)


def is_current(layout: Layout, key: dict[str, object], config_hash: str, *, frozen: bool) -> bool:
    """Whether the tree is, by the record, what a sync of `key` left and nothing moved.

    Without `frozen`, the lock must also have been made from this config (a stale lock
    takes the full path, which refuses it)."""
    return current(layout, key, config_hash, frozen=frozen) is not None


def is_clean(layout: Layout, key: dict[str, object], config_hash: str, *, frozen: bool) -> bool:
    """`is_current`, and the sync that wrote the record left nothing for gc to collect."""
    doc = current(layout, key, config_hash, frozen=frozen)
    return doc is not None and doc.get("clean") is True


def current(
    layout: Layout, key: dict[str, object], config_hash: str, *, frozen: bool
) -> dict[str, object] | None:
    """The record when it vouches for the tree (`is_current`), else None."""
    path = layout.sync_record
    try:
        mtime = os.stat(path).st_mtime_ns
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in key.items()):
        return None
    if not frozen and doc.get("lock_config_hash") != config_hash:
        return None
    stamps, witnesses = doc.get("stamps"), doc.get("witnesses", {})
    if not isinstance(stamps, dict) or not isinstance(witnesses, dict):
        return None
    for name, recorded in stamps.items():
        if _stamp(Path(name)) != recorded:
            return None
        if recorded is not None and recorded[2] >= mtime - RACY_NS:
            witness = witnesses.get(name)
            if witness is None or _witness(Path(name)) != witness:
                return None
    return doc


class _Replaced(Exception):
    """The lock's bytes no longer hash to the digest the sync applied."""


def keep_lock(layout: Layout, lock_path: Path, sha256: str) -> bool:
    """Keep a copy of the applied lock beside the record (before the record is written):
    the file at `lock_path` copied a block at a time while hashed, compared with the copy
    there as it goes (rewritten only from the first difference, never held whole: 26 MB
    at 100,000 tags). False, the old copy left as it was, when the file is gone or its
    bytes do not hash to `sha256` (changed since the sync read it); `changed_scope`
    checks the copy against the record's digest before any use."""
    try:
        handle = lock_path.open("rb")
    except OSError:
        return False
    layout.tmp.mkdir(parents=True, exist_ok=True)
    with handle:
        try:
            replace_if_changed(
                layout.state / _APPLIED_LOCK, _hashed(handle, sha256), tmp_dir=layout.tmp
            )
        except _Replaced:
            return False
    return True


def _hashed(handle: BinaryIO, sha256: str) -> Iterator[bytes]:
    """The file's blocks; `_Replaced` at its end unless they hash to `sha256`."""
    hasher = hashlib.sha256()
    for block in chunks_of(handle):
        hasher.update(block)
        yield block
    if hasher.hexdigest() != sha256:
        raise _Replaced


def changed_scope(layout: Layout, key: dict[str, object], lock_path: Path) -> frozenset[str] | None:
    """The repositories a sync of the lock at `lock_path` (whose bytes `key` hashes) must
    read when the record vouches for the tree as the sync of another lock (the tree's
    location and registrish the same, no stamp moved; the config may differ: the tree is
    made from the lock alone, and the host configs are rendered again anyway); None when
    it does not (every repository is read)."""
    try:
        doc = json.loads(layout.sync_record.read_bytes())
        previous, config = doc["lock_sha256"], doc["config_sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(previous, str) or previous == key["lock_sha256"]:
        return None
    prior = {**key, "lock_sha256": previous, "config_sha256": config}
    if current(layout, prior, "", frozen=True) is None:
        return None
    # the copy must be the lock the record was written for (it hashes to its digest)
    old = layout.state / _APPLIED_LOCK
    return delta.changed_names_of_files(old, previous, lock_path, str(key["lock_sha256"]))
