"""`gc`: mark from the lock, sweep the rest; never anything the lock reaches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.cli import quiet
from support.fake_upstream import FakeUpstream, build_image, build_index, lock_of, locked
from support.sync import sync
from support.trees import verify_tree

from registrish_lock.tree import batched
from registrish_lock.tree.gcbatched import collect_local_garbage as collect_garbage
from registrish_lock.tree.layout import Layout


@pytest.fixture(autouse=True, params=[1000, 0, 2], ids=["whole", "per-repository", "2-tags"])
def batch_tags(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every scenario as one whole plan, and in batches (`gcbatched`) of one repository
    (0: any lock is larger, each repository a batch of its own) and of 2 tags."""
    size: int = request.param
    monkeypatch.setattr(batched, "BATCH_TAGS", size)
    return size


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_gc_dry_run_lists_then_gc_removes_only_what_the_lock_no_longer_reaches(
    tmp_path: Path,
) -> None:
    up = FakeUpstream()
    keep = build_image(up, "app", "v1", seed="keep")
    shared = build_image(up, "other", "v1", seed="keep")  # same blobs as `keep`
    gone = build_image(up, "gone", "v1", seed="gone", layer_sizes=(50_000,))
    amd = build_image(up, "multi", None, seed="amd")
    old_index = build_index(up, "multi", "v1", [amd])
    both = lock_of(
        locked("app", "v1", keep),
        locked("other", "v1", shared),
        locked("gone", "v1", gone),
        locked("multi", "v1", old_index),
    )
    sync(tmp_path, both, up)
    # the lock moves on: `gone` and `other` dropped, multi:v1 moved to a new image
    new = build_image(up, "multi", "v1", seed="new")
    after = lock_of(locked("app", "v1", keep), locked("multi", "v1", new))
    sync(tmp_path, after, up)
    layout = Layout(tmp_path)
    before = files(tmp_path)

    dry = collect_garbage(lock=after, layout=layout, console=quiet(), dry_run=True)
    assert files(tmp_path) == before  # dry run touches nothing
    swept = {s.rel for s in dry.sweeps}
    assert f"v2/multi/manifests/{old_index.digest}" in swept
    assert f"v2/multi/manifests/{amd.digest}.~oci-manifest" in swept
    assert f"<store>/blobs/sha256/{gone.blobs[-1][7:]}" in swept
    assert f"v2/other/blobs/{shared.blobs[0]}" in swept
    # a blob `other` shared with `app` is still reached: its store copy stays
    assert f"<store>/blobs/sha256/{keep.blobs[0][7:]}" not in swept
    assert dry.emptied_repos == ("gone", "other")
    # bytes freed: every unreached blob once (hardlinks are one inode) plus manifests/docs
    unreached = (all_sizes := {d: len(up.blobs[d]) for d in set(gone.blobs) | set(amd.blobs)})
    assert dry.bytes_freed >= sum(unreached.values())
    assert dry.bytes_freed < sum(all_sizes.values()) + 20_000
    lines = dry.describe(dry_run=True)
    assert lines[-1].startswith("Would free") and "would remove repository gone" in lines

    real = collect_garbage(lock=after, layout=layout, console=quiet(), dry_run=False)
    assert {s.rel for s in real.sweeps} == swept
    left = files(tmp_path)
    assert left == before - swept
    assert not (tmp_path / "v2/gone").exists() and not (tmp_path / "v2/other").exists()
    # everything the lock reaches is still there and intact; a sync has nothing to do
    verify_tree(tmp_path)
    assert not sync(tmp_path, after, up).plan.pending
    assert not collect_garbage(lock=after, layout=layout, console=quiet(), dry_run=True).pending
    assert json.loads((tmp_path / "v2/_catalog").read_bytes()) == {"repositories": ["app", "multi"]}


def test_gc_keeps_resumable_partials_and_removes_stale_ones(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    lock = lock_of(locked("app", "v1", img))
    sync(tmp_path, lock, up)
    tmp = Layout(tmp_path).state / "tmp"
    needed = tmp / f"{img.blobs[0][7:]}.partial"
    os.remove(Layout(tmp_path).state / "blobs/sha256" / img.blobs[0][7:])
    needed.write_bytes(b"half")
    stale = tmp / f"{'e' * 64}.partial"
    stale.write_bytes(b"junk")
    (tmp / ".tmp-leftover").write_bytes(b"x")
    plan = collect_garbage(lock=lock, layout=Layout(tmp_path), console=quiet(), dry_run=False)
    assert needed.exists() and not stale.exists() and not (tmp / ".tmp-leftover").exists()
    assert {s.what for s in plan.sweeps} == {"temp file"}


def test_gc_keeps_a_repository_whose_locked_manifest_is_missing(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    lock = lock_of(locked("app", "v1", img))
    sync(tmp_path, lock, up)
    for path in (tmp_path / "v2/app/manifests").glob(f"{img.digest}*"):
        path.unlink()
    (tmp_path / "v2/app/manifests/v1").unlink()
    (tmp_path / "v2/app/manifests/v1.~oci-manifest").unlink()
    plan = collect_garbage(lock=lock, layout=Layout(tmp_path), console=quiet(), dry_run=False)
    assert plan.kept_unknown == ("app",)
    assert not plan.sweeps  # without the manifest gc cannot tell which blobs are reached
    assert all((tmp_path / "v2/app/blobs" / d).exists() for d in img.blobs)


def _contents(root: Path) -> dict[str, bytes]:
    """The tree's and its content store's files (the sync record left out)."""
    found: dict[str, bytes] = {}
    for top in (root, Layout(root).state):
        for path in top.rglob("*"):
            if path.is_file() and path.name != Layout(root).sync_record.name:
                found[f"{top.name}/{path.relative_to(top).as_posix()}"] = path.read_bytes()
    return found


def test_gc_in_batches_plans_and_sweeps_what_one_whole_plan_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_tags: int
) -> None:
    """A blob shared by repositories of different batches stays; an unlocked repository,
    a stale tag, a stray store blob and a temp file go; a dry run removes nothing."""
    up = FakeUpstream()
    a1 = build_image(up, "a", "v1", seed="shared")
    a2 = build_image(up, "a", "v2", seed="a2")
    b1 = build_image(up, "b", "v1", seed="shared")  # a's blobs, in another batch
    c1 = build_image(up, "org/c", "v1", seed="c")
    d1 = build_image(up, "d", "v1", seed="d")
    full = lock_of(
        locked("a", "v1", a1),
        locked("a", "v2", a2),
        locked("b", "v1", b1),
        locked("org/c", "v1", c1),
        locked("d", "v1", d1),
    )
    after = lock_of(locked("a", "v1", a1), locked("b", "v1", b1), locked("d", "v1", d1))
    trees = {name: tmp_path / name / "public" for name in ("whole", "parts")}
    for root in trees.values():
        sync(root, full, up)
        layout = Layout(root)
        (layout.path("v2/d/manifests/old")).write_bytes(
            layout.path("v2/d/manifests/v1").read_bytes()
        )
        layout.store_blob("sha256:" + "e" * 64).write_bytes(b"stray")
        (layout.state / "tmp" / ".tmp-leftover").write_bytes(b"x")
    plans = {}
    for name, size in (("whole", 1000), ("parts", batch_tags)):
        monkeypatch.setattr(batched, "BATCH_TAGS", size)
        layout = Layout(trees[name])
        before = _contents(trees[name])
        dry = collect_garbage(lock=after, layout=layout, console=quiet(), dry_run=True)
        assert _contents(trees[name]) == before
        real = collect_garbage(lock=after, layout=layout, console=quiet(), dry_run=False)
        assert real == dry
        plans[name] = real
    whole, parts = plans["whole"], plans["parts"]
    assert parts.to_json() == whole.to_json()
    assert parts.describe(dry_run=True) == whole.describe(dry_run=True)
    assert _contents(trees["parts"]) == _contents(trees["whole"])
    swept = {s.rel for s in whole.sweeps}
    assert "v2/d/manifests/old" in swept and f"v2/a/manifests/{a2.digest}" in swept
    assert f"<store>/blobs/sha256/{'e' * 64}" in swept
    assert not any(f"<store>/blobs/sha256/{d[7:]}" in swept for d in a1.blobs)
    assert whole.emptied_repos == ("org/c",) and not (trees["parts"] / "v2/org").exists()
    assert whole.bytes_freed > 0
    for root in trees.values():
        verify_tree(root)
        assert not sync(root, after, up).plan.pending
