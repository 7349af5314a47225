"""`gc`: mark from the lock, sweep the rest; never anything the lock reaches."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.cli import quiet
from support.fake_upstream import FakeUpstream, build_image, build_index, lock_of, locked
from support.sync import sync
from support.trees import verify_tree

from registrish_lock.tree.apply import collect_garbage
from registrish_lock.tree.layout import Layout


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
