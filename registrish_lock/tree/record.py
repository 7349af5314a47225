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
  sees the stamp differ and scans. A stamp within `RACY_NS` of the record's own mtime is
  not trusted (a change in the same clock tick would not show; cf. git's "racy" index).
- Not seen: a file rewritten in place (same name, no rename) below the top level. Nothing
  registrish does writes that way; `sync --verify` (which ignores the record) and
  `check --local` re-read every file and find it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .. import __version__
from ..fsutil import atomic_write_bytes, fsync_dir
from .layout import Layout

RECORD_FORMAT = 1
#: Stamps younger than this against the record are not trusted (FAT's mtime is 2 s coarse).
RACY_NS = 2_000_000_000
_SECTIONS = ("manifests", "tags", "blobs", "referrers")
Stamp = list[int] | None


def config_bytes(path: Path) -> bytes:
    """The config's bytes for the key, read before the config is parsed: a file changed in
    between then misses the record instead of vouching for what was not read."""
    return path.read_bytes() if path.is_file() else b""


def record_key(
    config_bytes: bytes, lock_bytes: bytes, layout: Layout, hosts_dir: Path
) -> dict[str, object]:
    """Everything a completed sync's output depends on besides the tree: the config and lock
    bytes, and where the tree and host configs are (host configs name the absolute root: a
    workspace moved whole keeps every inode and mtime, yet its configs must be rewritten)."""
    return {
        "format": RECORD_FORMAT,
        "registrish": __version__,
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "lock_sha256": hashlib.sha256(lock_bytes).hexdigest(),
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
        dirs.update(repo / s for s in _SECTIONS)
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


def write(
    layout: Layout, key: dict[str, object], lock_config_hash: str, paths: Iterable[Path]
) -> None:
    """Record the tree as complete for `key` (the last step of a sync)."""
    doc = {
        **key,
        "lock_config_hash": lock_config_hash,
        "stamps": {str(p): _stamp(p) for p in paths},
    }
    layout.tmp.mkdir(parents=True, exist_ok=True)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    atomic_write_bytes(layout.sync_record, data, tmp_dir=layout.tmp)


def is_current(layout: Layout, key: dict[str, object], config_hash: str, *, frozen: bool) -> bool:
    """Whether the tree is, by the record, what a sync of `key` left and nothing moved.

    Without `frozen`, the lock must also have been made from this config (a stale lock
    takes the full path, which refuses it)."""
    path = layout.sync_record
    try:
        mtime = os.stat(path).st_mtime_ns
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in key.items()):
        return False
    if not frozen and doc.get("lock_config_hash") != config_hash:
        return False
    stamps = doc.get("stamps")
    if not isinstance(stamps, dict):
        return False
    for name, recorded in stamps.items():
        if _stamp(Path(name)) != recorded:
            return False
        if recorded is not None and recorded[2] >= mtime - RACY_NS:
            return False
    return True
