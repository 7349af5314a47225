"""Moving the content store out of the served tree, where older releases kept it.

`<root>/.registrish/` (blobs, temp files, the lock) sat inside the root, and hosts that
deploy a whole directory (Netlify, Cloudflare Pages, GitHub Pages) published it: every blob
twice, and the lock file. The first `sync`, `gc` or `publish` that takes the tree's lock
moves it to `Layout.state` (`tree_lock` calls `move_legacy_store` while holding the old lock
file, so an older registrish still working on the tree is waited for):

- the usual case is one `rename(2)` of the directory: atomic, and the tree's hardlinks keep
  pointing at the same inodes (the flock held on the old lock file moves with it);
- when both exist (an older release ran again after a move, or a merge was interrupted) the
  old store's entries are renamed into the new one one by one (a blob already there is the
  same content: its name is its digest), then the old directory is removed. Every step can be
  repeated, so an interrupted move finishes on the next run.

A dry run moves nothing: `dry_run_layout` reads the old store where it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..console import Console
from ..errors import LocalError
from ..fsutil import fsync_dir
from .layout import LEGACY_STATE_DIR, Layout

#: What a store holds, relative to its directory: these are merged entry by entry.
_MERGED = ("blobs/sha256", "tmp")


def legacy_store(layout: Layout) -> Path | None:
    """`<root>/.registrish` when it is a directory that is not the configured store."""
    old = layout.root / LEGACY_STATE_DIR
    if not old.is_dir() or old.is_symlink():
        return None
    with contextlib.suppress(OSError):
        if old.samefile(layout.state):
            return None
    return old


def dry_run_layout(layout: Layout, console: Console) -> Layout:
    """The layout a dry run reads: the old store in place (a dry run changes nothing), said."""
    old = legacy_store(layout)
    if old is None:
        return layout
    console.result(f"would move the content store {old} to {layout.state}")
    return Layout(layout.root, old)


def move_legacy_store(old: Path, new: Path, console: Console) -> None:
    """Move the store at `old` to `new` (caller holds `old`'s lock file). Idempotent."""
    if not old.is_dir():
        return  # moved by another process while we waited for the lock
    new.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(old).st_dev != os.stat(new.parent).st_dev:
        raise LocalError(
            f"cannot move the content store {old} to {new}: another filesystem "
            "(the tree's blobs are hardlinks into the store)",
            hint="set [registry] store to a directory on the root's filesystem, outside the root",
        )
    try:
        os.rename(old, new)  # replaces `new` only if it is an empty directory
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise LocalError(f"cannot move the content store {old} to {new}: {exc}") from None
        _merge(old, new, console)
    fsync_dir(old.parent)
    fsync_dir(new.parent)
    console.info(f"moved the content store out of the served tree: {old} -> {new}")


def _merge(old: Path, new: Path, console: Console) -> None:
    for sub in _MERGED:
        source, target = old / sub, new / sub
        if not source.is_dir():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(source):
            dest = target / entry.name
            if entry.is_file(follow_symlinks=False) and not dest.exists():
                os.rename(entry.path, dest)
            else:  # the same blob (named by its digest), or a leftover temp file
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry.path)
        fsync_dir(target)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(old / "lock")  # its flock (ours) ends with our descriptor
    for directory in (*(old / sub for sub in _MERGED), old / "blobs", old):
        with contextlib.suppress(OSError):  # absent, or holding something not ours
            directory.rmdir()
    if old.exists():
        console.warn(
            f"{old} still holds files registrish did not write; remove them: hosts that "
            "deploy the whole root publish that directory"
        )
