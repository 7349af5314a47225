"""The content store lives outside the served root; a tree synced by an older release (store
in `<root>/.registrish/`) is moved on the next `sync`/`gc`/`publish`: one rename keeping
every hardlink, a merge when both exist, nothing for a dry run, idempotent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import quiet
from support.fake_upstream import FakeUpstream, build_image, lock_of, locked
from support.sync import cli_project, sync, write_project
from support.trees import verify_tree
from testbed.procs import in_ci

from registrish_lock import cli
from registrish_lock.errors import ConfigError, ExitCode, LocalError
from registrish_lock.lock.config import load_config
from registrish_lock.tree.layout import LEGACY_STATE_DIR, Layout, default_store
from registrish_lock.tree.storemove import legacy_store
from registrish_lock.tree.treelock import tree_lock


def inodes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in directory.iterdir()}


def test_the_default_store_is_beside_the_root_on_its_filesystem(tmp_path: Path) -> None:
    assert default_store(tmp_path / "public") == tmp_path / ".registrish-public"
    assert Layout(tmp_path / "public").state == tmp_path / ".registrish-public"
    assert default_store(Path(".")).name == f".registrish-{Path.cwd().name}"


def test_sync_moves_an_old_store_out_keeping_hardlinks_and_fetching_nothing(
    tmp_path: Path,
) -> None:
    root = tmp_path / "public"
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1", layer_sizes=(30_000,))))
    sync(root, lock, up)
    new = Layout(root)
    # make it an old release's tree: move the store into the root, where it used to be
    os.rename(new.state, root / LEGACY_STATE_DIR)
    (root / LEGACY_STATE_DIR / "lock").write_text("")
    blobs = inodes(root / LEGACY_STATE_DIR / "blobs/sha256")
    assert legacy_store(new) == root / LEGACY_STATE_DIR

    with tree_lock(new, quiet()):
        assert new.lock_file.read_text().strip() == str(os.getpid())
    assert not (root / LEGACY_STATE_DIR).exists()
    assert inodes(new.state / "blobs/sha256") == blobs  # renamed, not copied
    for blob in (root / "v2/app/blobs").iterdir():
        assert blob.stat().st_ino == blobs[blob.name.removeprefix("sha256:")]
    up.requests.clear()
    result = sync(root, lock, up)
    assert not result.plan.pending and up.requests == []  # nothing to fetch again
    verify_tree(root)
    with tree_lock(new, quiet()):  # idempotent: nothing left to move
        pass
    assert not (root / LEGACY_STATE_DIR).exists()


def test_both_stores_are_merged_and_the_old_one_removed(tmp_path: Path) -> None:
    root = tmp_path / "public"
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    sync(root, lock, up)
    new = Layout(root)
    old = root / LEGACY_STATE_DIR
    (old / "blobs/sha256").mkdir(parents=True)
    (old / "tmp").mkdir()
    (old / "lock").write_text("")
    kept = next((new.state / "blobs/sha256").iterdir())
    os.link(kept, old / "blobs/sha256" / kept.name)  # the same blob in both
    extra = hashlib.sha256(b"only in the old store").hexdigest()
    (old / "blobs/sha256" / extra).write_bytes(b"only in the old store")
    (old / "tmp" / f"{'f' * 64}.partial").write_bytes(b"half")

    with tree_lock(new, quiet()):
        pass
    assert not old.exists()
    assert (new.state / "blobs/sha256" / extra).read_bytes() == b"only in the old store"
    assert (new.state / "tmp" / f"{'f' * 64}.partial").read_bytes() == b"half"
    assert kept.exists()
    verify_tree(root)


def test_an_unknown_file_in_the_old_store_is_left_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "public"
    sync(root, lock_of(), FakeUpstream())
    old = root / LEGACY_STATE_DIR
    (old / "blobs").mkdir(parents=True)
    (old / "notes.txt").write_text("mine")
    console = quiet()
    with tree_lock(Layout(root), console):
        pass
    assert (old / "notes.txt").read_text() == "mine"
    assert "still holds files" in console.err.getvalue()  # type: ignore[attr-defined]


def test_cli_dry_run_moves_nothing_then_sync_moves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    up, config = cli_project(tmp_path, monkeypatch)
    assert cli.main(["sync", "-c", str(config), "-q"]) == ExitCode.OK
    root = tmp_path / "public"
    store = tmp_path / ".registrish-public"
    assert store.is_dir() and not (root / LEGACY_STATE_DIR).exists()
    os.rename(store, root / LEGACY_STATE_DIR)  # as an older release left it
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()

    assert cli.main(["sync", "-c", str(config), "--dry-run"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert f"would move the content store {root / LEGACY_STATE_DIR} to {store}" in out
    assert "up to date" in out  # the old store was read where it is: nothing to fetch
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert cli.main(["gc", "-c", str(config), "--dry-run"]) == ExitCode.OK
    assert "would remove" not in capsys.readouterr().out

    up.requests.clear()
    assert cli.main(["sync", "-c", str(config), "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["summary"]["fetched_blobs"] == 0
    assert not (root / LEGACY_STATE_DIR).exists() and (store / "blobs/sha256").is_dir()
    assert up.requests == []


def test_a_configured_store_is_used_and_may_not_overlap_the_root(tmp_path: Path) -> None:
    config, _ = write_project(tmp_path)
    text = config.read_text()
    config.write_text(text.replace('root = "public"', 'root = "public"\nstore = "cas"'))
    assert load_config(config).layout.state == tmp_path / "cas"
    for bad in ("public/.registrish", "public", "."):
        config.write_text(text.replace('root = "public"', f'root = "public"\nstore = "{bad}"'))
        with pytest.raises(ConfigError, match=r"registry\.store: .* overlaps the root"):
            load_config(config)


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than `tmp_path` (/dev/shm is a tmpfs)."""
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp below, removed after
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        message = "no second filesystem here: /dev/shm is not a tmpfs"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    path = Path(tempfile.mkdtemp(prefix="registrish-store-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_store_on_another_filesystem_is_refused(
    tmp_path: Path, other_filesystem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config = cli_project(tmp_path, monkeypatch)
    text = config.read_text()
    store = other_filesystem / "store"
    config.write_text(text.replace('root = "public"', f'root = "public"\nstore = "{store}"'))
    assert cli.main(["sync", "-c", str(config)]) == ExitCode.LOCAL
    (tmp_path / "public" / LEGACY_STATE_DIR / "blobs").mkdir(parents=True)
    layout = load_config(config).layout
    with pytest.raises(LocalError, match="another filesystem"), tree_lock(layout, quiet()):
        pass  # pragma: no cover
    assert (tmp_path / "public" / LEGACY_STATE_DIR / "blobs").is_dir()  # left as it was
