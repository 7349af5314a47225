"""The sync record (tree/record.py): a no-op sync trusts it only when the lock and config
are byte for byte the last completed sync's and no directory of the tree moved since; what
it cannot see (a file rewritten in place) `sync --verify` and `check --local` find."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from testbed.registrish import registrish

from bench.huge import HugeWorkspace, move_tag, tag_name, write_layout
from registrish_lock.tree.layout import Layout

TAGS = 5
REPO = "huge/r000"


@dataclass(frozen=True)
class Mirror:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "registrish.toml"

    @property
    def lock(self) -> Path:
        return self.path / "registrish.lock"

    @property
    def layout(self) -> Layout:
        return Layout(self.path / "public")

    def sync(self, *args: str, check: bool = True) -> dict[str, object]:
        proc = registrish(self.config, "sync", "--json", *args, check=check)
        doc: dict[str, object] = json.loads(proc.stdout) if proc.stdout.strip() else {}
        doc["exit"] = proc.returncode
        return doc

    def manifest(self, tag: str) -> Path:
        return self.layout.path(Layout.rel_manifest(REPO, tag))

    def age(self) -> None:
        """Move every mtime of the tree, its store and host configs a minute back: what a scheduled
        sync sees minutes after the last one (the record distrusts fresh stamps)."""
        past = time.time() - 60
        for top in (self.layout.root, self.layout.state, self.path / "hosts"):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [*dirnames, *filenames]:
                    os.utime(Path(dirpath) / name, (past, past), follow_symlinks=False)
            os.utime(top, (past, past))

    def settle(self) -> None:
        """A record a no-op sync trusts (asserted)."""
        self.age()
        assert self.sync()["from_record"] is False  # the aged stamps differ: full path
        assert self.sync()["from_record"] is True


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    write_layout(tmp_path / "layouts" / "r000", "r000", TAGS)
    ws = HugeWorkspace.create(tmp_path / "ws", tmp_path / "layouts", Path())
    m = Mirror(ws.path)
    registrish(m.config, "lock")
    registrish(m.config, "sync")
    return m


def test_a_noop_sync_trusts_a_settled_record(mirror: Mirror) -> None:
    mirror.settle()
    doc = mirror.sync()
    assert doc["from_record"] is True and doc["exit"] == 0
    assert doc["summary"]["upstream_requests"] == 0  # type: ignore[index]
    dry = mirror.sync("--dry-run")
    assert dry["from_record"] is True and dry["exit"] == 0


def test_a_record_as_young_as_its_stamps_is_trusted_by_its_witnesses(mirror: Mirror) -> None:
    # The fixture's sync just wrote the tree: its directories are as new as the record, and
    # the record holds their listings, which have not changed.
    doc = json.loads(mirror.layout.sync_record.read_bytes())
    assert doc["witnesses"]
    assert mirror.sync()["from_record"] is True


def test_a_change_hidden_in_the_same_tick_is_found_by_the_witness(mirror: Mirror) -> None:
    # A manifest deleted, then its directory's mtime put back: the stamp says nothing moved
    # (a change within the filesystem's clock tick looks so); the listing differs.
    target = mirror.manifest(tag_name(3))
    data = target.read_bytes()
    directory = target.parent
    st = directory.stat()
    target.unlink()
    os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert directory.stat().st_mtime_ns == st.st_mtime_ns
    doc = mirror.sync()
    assert doc["from_record"] is False
    assert target.read_bytes() == data


def test_verify_ignores_the_record(mirror: Mirror) -> None:
    mirror.settle()
    assert mirror.sync("--verify")["from_record"] is False


def test_a_deleted_manifest_is_found_by_sync_check_and_verify(mirror: Mirror) -> None:
    mirror.settle()
    target = mirror.manifest(tag_name(2))
    data = target.read_bytes()
    target.unlink()
    check = registrish(mirror.config, "check", "--local", check=False)
    assert check.returncode == 1 and Layout.rel_manifest(REPO, tag_name(2)) in check.stdout
    doc = mirror.sync()
    assert doc["from_record"] is False
    assert target.read_bytes() == data
    target.unlink()
    assert mirror.sync("--verify")["from_record"] is False
    assert target.read_bytes() == data


def test_a_deleted_store_blob_is_fetched_again(mirror: Mirror) -> None:
    mirror.settle()
    store = mirror.layout.state / "blobs" / "sha256"
    victim = sorted(store.iterdir())[0]
    victim.unlink()
    assert mirror.sync()["from_record"] is False
    assert victim.is_file()
    assert registrish(mirror.config, "check", "--local").returncode == 0


def test_a_manifest_edited_in_place_is_found_by_check_and_verify(mirror: Mirror) -> None:
    mirror.settle()
    target = mirror.manifest(tag_name(1))
    data = target.read_bytes()
    with target.open("r+b") as handle:  # same name, same size, no rename: no stamp moves
        handle.write(b" ")
    check = registrish(mirror.config, "check", "--local", check=False)
    assert check.returncode == 1 and Layout.rel_manifest(REPO, tag_name(1)) in check.stdout
    # A plain sync trusts the record here (README, "Large mirrors"); --verify repairs.
    assert mirror.sync()["from_record"] is True
    assert mirror.sync("--verify")["from_record"] is False
    assert target.read_bytes() == data
    assert registrish(mirror.config, "check", "--local").returncode == 0


def test_a_deleted_host_config_is_written_again(mirror: Mirror) -> None:
    mirror.settle()
    conf = mirror.path / "hosts" / "registrish.conf"
    data = conf.read_bytes()
    conf.unlink()
    assert mirror.sync()["from_record"] is False
    assert conf.read_bytes() == data


def test_a_hand_edited_lock_is_never_taken_for_the_applied_one(mirror: Mirror) -> None:
    mirror.settle()
    original = mirror.lock.read_text()
    moved_from = mirror.manifest(tag_name(0)).read_bytes()
    # Point tag 0 at tag 1's manifest by hand: same config, other lock bytes.
    doc = registrish(mirror.config, "lock", "--json").stdout
    assert json.loads(doc)["written"] is False
    lines = original.splitlines()
    digests = [line for line in lines if line.startswith("digest = ")]
    edited = original.replace(digests[0], digests[1], 1)
    assert edited != original
    mirror.lock.write_text(edited)
    got = mirror.sync("--frozen")
    assert got["from_record"] is False
    assert mirror.manifest(tag_name(0)).read_bytes() == mirror.manifest(tag_name(1)).read_bytes()
    mirror.lock.write_text(original)
    assert mirror.sync()["from_record"] is False  # back to the old bytes: the record is gone
    assert mirror.manifest(tag_name(0)).read_bytes() == moved_from


def test_an_interrupted_sync_leaves_no_record(mirror: Mirror, tmp_path: Path) -> None:
    mirror.settle()
    original = mirror.lock.read_bytes()
    # A new tag whose layer is gone from the layout: the sync fails half-way, after
    # writing nothing it could not complete.
    layouts = tmp_path / "layouts"
    write_layout(layouts / "r001", "r001", 1)
    index = json.loads((layouts / "r001" / "index.json").read_text())
    manifest_hex = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layouts / "r001" / "blobs" / "sha256" / manifest_hex).read_text())
    mirror.config.write_text(
        mirror.config.read_text()
        + f'[[image]]\nsource = "oci:layouts/r001"\nname = "huge/r001"\ntags = ["{tag_name(0)}"]\n'
    )
    registrish(mirror.config, "lock")
    layer = manifest["layers"][0]["digest"].removeprefix("sha256:")
    (layouts / "r001" / "blobs" / "sha256" / layer).unlink()
    failed = mirror.sync(check=False)
    assert failed["exit"] not in (0, None)
    assert not mirror.layout.sync_record.exists()
    # The old config and lock again: the tree changed under them, so no shortcut.
    mirror.config.write_text(
        mirror.config.read_text().split('[[image]]\nsource = "oci:layouts/r001"')[0]
    )
    mirror.lock.write_bytes(original)
    assert mirror.sync()["from_record"] is False


def test_a_stale_lock_is_refused_even_with_a_record(mirror: Mirror) -> None:
    mirror.settle()
    mirror.config.write_text(mirror.config.read_text().replace(f'"{tag_name(4)}"', '"9.9.9"'))
    proc = registrish(mirror.config, "sync", check=False)
    assert proc.returncode == 1 and "stale" in proc.stderr


# -- the lock's note (lock/lockcache.py) -------------------------------------------------------
NOTE = "not re-reading it"


def test_a_noop_lock_trusts_its_note(mirror: Mirror) -> None:
    first = registrish(mirror.config, "lock", "-v", "--json")
    second = registrish(mirror.config, "lock", "-v", "--json")
    assert NOTE in second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert b["written"] is False and b["tags"] == a["tags"] == TAGS and b["requests"] == 0


def test_a_hand_edited_lock_is_read_again_by_lock(mirror: Mirror) -> None:
    registrish(mirror.config, "lock")
    canonical = mirror.lock.read_text()
    mirror.lock.write_text(canonical + "\n# a note by hand\n")
    got = registrish(mirror.config, "lock", "-v", "--json")
    assert NOTE not in got.stderr and json.loads(got.stdout)["written"] is True
    assert mirror.lock.read_text() == canonical


def test_a_config_change_is_locked_despite_the_note(mirror: Mirror, tmp_path: Path) -> None:
    registrish(mirror.config, "lock")
    # The same layout with one more tag (the generator is deterministic), which the config
    # now selects.
    shutil.rmtree(tmp_path / "layouts" / "r000")
    write_layout(tmp_path / "layouts" / "r000", "r000", TAGS + 1)
    last, new_tag = tag_name(TAGS - 1), tag_name(TAGS)
    mirror.config.write_text(
        mirror.config.read_text().replace(f'"{last}"]', f'"{last}", "{new_tag}"]')
    )
    got = registrish(mirror.config, "lock", "-v", "--json")
    assert NOTE not in got.stderr and json.loads(got.stdout)["tags"] == TAGS + 1
    assert f'tag = "{new_tag}"' in mirror.lock.read_text()


def test_hosts_trusts_the_record_until_a_config_of_its_own_moves(mirror: Mirror) -> None:
    mirror.settle()
    got = registrish(mirror.config, "hosts", "--json")
    assert json.loads(got.stdout)["written"] == []
    conf = mirror.path / "hosts" / "registrish.conf"
    data = conf.read_bytes()
    conf.unlink()
    got = registrish(mirror.config, "hosts", "--json")
    assert json.loads(got.stdout)["written"] == [str(conf.resolve())]
    assert conf.read_bytes() == data


def test_a_gc_that_sweeps_drops_the_record(mirror: Mirror) -> None:
    mirror.settle()
    original = mirror.lock.read_text()
    # A lock without the last tag, by hand (so it is not canonical for the config: --frozen).
    head, sep, _last = original.rpartition("\n[[tag]]\n")
    assert sep
    mirror.lock.write_text(head + "\n")
    registrish(mirror.config, "gc", "--frozen")
    assert not mirror.layout.sync_record.exists()
    assert not mirror.manifest(tag_name(TAGS - 1)).exists()
    mirror.lock.write_text(original)  # the lock the record was written for, back again
    assert mirror.sync()["from_record"] is False
    assert mirror.manifest(tag_name(TAGS - 1)).is_file()


def test_a_workspace_moved_whole_gets_its_host_configs_rewritten(mirror: Mirror) -> None:
    mirror.settle()
    moved = Mirror(mirror.path.with_name("moved"))
    mirror.path.rename(moved.path)  # every inode and mtime inside stays as it was
    assert moved.sync()["from_record"] is False
    conf = (moved.path / "hosts" / "registrish.conf").read_text()
    assert str(moved.layout.root.resolve()) in conf
    assert moved.sync()["from_record"] is True  # fresh stamps, vouched for by their witnesses


# -- gc trusts a clean record ------------------------------------------------------------------
CLEAN = "vouches for a clean tree"


def gc(mirror: Mirror, *args: str) -> tuple[dict[str, object], bool]:
    """gc's JSON document, and whether it trusted the record."""
    proc = registrish(mirror.config, "gc", "-v", "--json", *args, check=False)
    doc: dict[str, object] = json.loads(proc.stdout)
    doc["exit"] = proc.returncode
    return doc, CLEAN in proc.stderr


def test_gc_with_nothing_to_collect_trusts_a_clean_record(mirror: Mirror) -> None:
    mirror.settle()
    doc, trusted = gc(mirror, "--dry-run")
    assert trusted and doc["exit"] == 0 and doc["remove"] == [] and not doc["pending"]
    doc, trusted = gc(mirror)
    assert trusted and doc["exit"] == 0 and doc["remove"] == []


def test_gc_after_a_tag_left_the_lock_still_collects(mirror: Mirror) -> None:
    mirror.settle()
    gone = tag_name(TAGS - 1)
    gone_digest = mirror.manifest(gone).read_bytes()
    mirror.config.write_text(mirror.config.read_text().replace(f', "{gone}"', ""))
    registrish(mirror.config, "lock")
    mirror.sync()  # it removes the tag, not its content
    mirror.settle()
    doc, trusted = gc(mirror, "--dry-run")
    assert not trusted and doc["exit"] == 1
    removed = {item["path"] for item in doc["remove"]}  # type: ignore[attr-defined]
    digest = "sha256:" + hashlib.sha256(gone_digest).hexdigest()
    assert Layout.rel_manifest(REPO, digest) in removed
    doc, trusted = gc(mirror)
    assert not trusted and doc["exit"] == 0
    assert not mirror.layout.path(Layout.rel_manifest(REPO, digest)).exists()
    doc, _ = gc(mirror, "--dry-run")
    assert doc["exit"] == 0 and doc["remove"] == []


def test_a_file_dropped_into_the_tree_is_found_by_gc(mirror: Mirror) -> None:
    mirror.settle()
    stray = mirror.layout.path(Layout.rel_blob(REPO, "sha256:" + "0" * 64))
    stray.write_bytes(b"not ours")
    doc, trusted = gc(mirror, "--dry-run")
    assert not trusted and doc["exit"] == 1
    assert [item["path"] for item in doc["remove"]] == [  # type: ignore[attr-defined]
        Layout.rel_blob(REPO, "sha256:" + "0" * 64)
    ]


def test_gc_with_a_hand_edited_lock_reads_the_tree(mirror: Mirror) -> None:
    mirror.settle()
    original = mirror.lock.read_text()
    head, sep, _last = original.rpartition("\n[[tag]]\n")
    mirror.lock.write_text(head + "\n")
    doc, trusted = gc(mirror, "--dry-run", "--frozen")
    assert sep and not trusted and doc["exit"] == 1
    assert Layout.rel_manifest(REPO, tag_name(TAGS - 1)) in {
        item["path"]
        for item in doc["remove"]  # type: ignore[attr-defined]
    }


# -- a moved tag: the sync reads the repositories whose lock entries changed -------------------
SCOPED = "reading only those"


def snapshot(mirror: Mirror) -> dict[str, tuple[int, int, bytes]]:
    """Every file of the tree and the host configs: (inode, mtime, sha256 of its bytes)."""
    files = {}
    for top in (mirror.layout.root, mirror.path / "hosts"):
        for path in top.rglob("*"):
            if path.is_file():
                st = path.stat()
                digest = hashlib.sha256(path.read_bytes()).digest()
                files[str(path)] = (st.st_ino, st.st_mtime_ns, digest)
    return files


@pytest.fixture
def two(tmp_path: Path) -> Mirror:
    """Two repositories, huge/r000 and huge/r001, synced and settled."""
    for repo in ("r000", "r001"):
        write_layout(tmp_path / "layouts" / repo, repo, TAGS)
    ws = HugeWorkspace.create(tmp_path / "ws", tmp_path / "layouts", Path())
    m = Mirror(ws.path)
    registrish(m.config, "lock")
    registrish(m.config, "sync")
    m.settle()
    return m


def sync_moved(mirror: Mirror, tag: str) -> tuple[str, bool]:
    """Move `tag` of huge/r000 upstream, `lock --upgrade` it and sync: (new digest, scoped)."""
    digest = move_tag(mirror.path / "layouts" / "r000", tag)
    registrish(mirror.config, "lock", "--upgrade", REPO)
    proc = registrish(mirror.config, "sync", "-v")
    return digest, SCOPED in proc.stderr


def test_a_moved_tag_rewrites_only_files_whose_bytes_change(two: Mirror) -> None:
    before = snapshot(two)
    digest, scoped = sync_moved(two, tag_name(1))
    assert scoped
    after = snapshot(two)
    written = {
        p for p, (ino, mtime, _) in after.items() if before.get(p, (0, 0, b""))[:2] != (ino, mtime)
    }
    same_bytes = {p for p in written if p in before and before[p][2] == after[p][2]}
    assert same_bytes == set()  # nothing rewritten with the bytes it had
    rel = {
        str(two.layout.root / r)
        for r in (
            Layout.rel_manifest(REPO, tag_name(1)),
            Layout.rel_manifest(REPO, digest),
            Layout.rel_referrers(REPO, digest),
        )
    }
    assert rel <= written
    assert str(two.path / "hosts" / "registrish.conf") in written  # its tag table moved
    assert not any("/huge/r001/" in p for p in written)
    assert two.manifest(tag_name(1)).read_bytes() == two.manifest(digest).read_bytes()
    assert registrish(two.config, "check", "--local").returncode == 0
    # The scoped sync left what a full one would: --verify has nothing to do.
    doc = two.sync("--verify")
    assert doc["from_record"] is False and doc["plan"]["pending"] is False  # type: ignore[index]


def test_a_moved_tag_with_a_file_deleted_elsewhere_reads_the_whole_tree(two: Mirror) -> None:
    victim = two.layout.path(Layout.rel_manifest("huge/r001", tag_name(3)))
    data = victim.read_bytes()
    victim.unlink()
    _digest, scoped = sync_moved(two, tag_name(2))
    assert not scoped
    assert victim.read_bytes() == data


def test_a_changed_copy_of_the_applied_lock_is_not_trusted(two: Mirror) -> None:
    kept = two.layout.state / "synced.lock"
    assert kept.read_bytes() == two.lock.read_bytes()
    kept.write_text(kept.read_text().replace(tag_name(4), tag_name(4) + "x"))
    _digest, scoped = sync_moved(two, tag_name(0))
    assert not scoped
    assert kept.read_bytes() == two.lock.read_bytes()
    assert registrish(two.config, "check", "--local").returncode == 0


def test_a_tag_left_the_lock_is_removed_by_a_scoped_sync(two: Mirror) -> None:
    gone = tag_name(TAGS - 1)
    two.config.write_text(two.config.read_text().replace(f', "{gone}"]', "]", 1))
    registrish(two.config, "lock")
    proc = registrish(two.config, "sync", "-v")
    assert SCOPED in proc.stderr
    assert not two.manifest(gone).exists()
    listed = json.loads(two.layout.path(Layout.rel_tags_list(REPO)).read_text())["tags"]
    assert gone not in listed and len(listed) == TAGS - 1
    assert registrish(two.config, "check", "--local").returncode == 0
