"""`record.keep_lock`: the applied lock's copy beside the sync record, streamed from the
lock file with its hash checked, compared with the copy there as it goes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from registrish_lock.tree import record
from registrish_lock.tree.layout import Layout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_copy_is_written_then_kept_while_its_bytes_are_the_same(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "public")
    lock = tmp_path / "registrish.lock"
    data = b"version = 1\n" + b"x" * 3_000_000  # a few read blocks
    lock.write_bytes(data)
    kept = layout.state / "synced.lock"
    assert record.keep_lock(layout, lock, _sha(data))
    assert kept.read_bytes() == data
    before = os.stat(kept)
    assert record.keep_lock(layout, lock, _sha(data))
    after = os.stat(kept)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    moved = data[:-10] + b"y" * 10
    lock.write_bytes(moved)
    assert record.keep_lock(layout, lock, _sha(moved))
    assert kept.read_bytes() == moved and os.stat(kept).st_ino != before.st_ino
    assert sorted(os.listdir(layout.tmp)) == []  # no temporary file left


def test_a_lock_changed_since_it_was_applied_is_not_kept(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "public")
    lock = tmp_path / "registrish.lock"
    lock.write_bytes(b"applied\n")
    assert record.keep_lock(layout, lock, _sha(b"applied\n"))
    kept = layout.state / "synced.lock"
    for edited in (b"applied\nedited by hand\n", b"applied\n"[:-1], b"APPLIED\n"):
        lock.write_bytes(edited)  # the sync applied b"applied\n"; then the lock changed
        assert not record.keep_lock(layout, lock, _sha(b"applied\n"))
        assert kept.read_bytes() == b"applied\n"
    lock.unlink()
    assert not record.keep_lock(layout, lock, _sha(b"applied\n"))
    assert kept.read_bytes() == b"applied\n"
    assert sorted(os.listdir(layout.tmp)) == []
