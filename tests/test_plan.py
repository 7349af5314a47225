"""The planner is a pure function of (lock, manifests, TreeState): no disk, no network."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.fake_upstream import FakeUpstream, build_image, build_index, lock_of, locked

from registrish_lock.console import human_bytes
from registrish_lock.errors import IntegrityError
from registrish_lock.lock.lockfile import Lock, LockedManifest
from registrish_lock.oci.manifest import Manifest, parse_manifest
from registrish_lock.tree.desired import EMPTY_REFERRERS, PING_DOCUMENT, Desired, desired_tree
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.plan import make_plan
from registrish_lock.tree.state import FileInfo, TreeState


def parsed(up: FakeUpstream) -> dict[str, Manifest]:
    return {d: parse_manifest(data, expected_digest=d) for d, data in up.manifests.items()}


def satisfied(desired: Desired) -> TreeState:
    """The TreeState of a tree that holds exactly `desired` (inode numbers made up)."""
    files: dict[str, FileInfo] = {}
    digests: dict[str, str] = {}
    store = {
        d: FileInfo(size, 1, i) for i, (d, (size, _, _)) in enumerate(sorted(desired.store.items()))
    }
    for blob in desired.blobs:
        files[blob.rel] = store[blob.digest]
    for n, want in enumerate((*desired.manifests, *desired.tags)):
        files[want.rel] = files[want.twin] = FileInfo(want.size, 2, n)
        digests[want.rel] = digests[want.twin] = want.digest
    docs = {rel: data for rel, (_, data) in desired.docs.items()}
    return TreeState(files=files, manifest_digests=digests, docs=docs, store=store)


def test_empty_tree_plans_everything_in_order() -> None:
    up = FakeUpstream()
    amd = build_image(up, "multi", None, seed="a")
    arm = build_image(up, "multi", None, seed="b", platform="linux/arm64")
    index = build_index(up, "multi", "v1", [amd, arm])
    lock = lock_of(locked("multi", "v1", index, platforms=["linux/arm64"]))
    plan = make_plan(desired_tree(lock, parsed(up)), TreeState())
    assert {f.digest for f in plan.fetches} == set(arm.blobs)  # amd64 is not selected
    assert [m.want.digest for m in plan.manifests] == [arm.digest, index.digest]
    assert [t.action for t in plan.tags] == ["create"]
    assert {d.rel for d in plan.referrers} == {
        Layout.rel_referrers("multi", arm.digest),
        Layout.rel_referrers("multi", index.digest),
    }
    assert all(d.data == EMPTY_REFERRERS for d in plan.referrers)
    assert plan.ping is not None and plan.ping.data == PING_DOCUMENT == b"{}\n"
    assert plan.catalog is not None and plan.catalog.data == b'{"repositories":["multi"]}\n'
    lines = plan.describe()
    total = human_bytes(sum(len(up.blobs[d]) for d in arm.blobs))
    assert lines[0] == f"Would fetch 3 blobs ({total}); 0 already present (0 B)"
    fetch_lines = [line for line in lines if line.startswith("would fetch blob")]
    assert fetch_lines == sorted(fetch_lines) and len(fetch_lines) == 3


def test_a_satisfied_tree_plans_nothing() -> None:
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    desired = desired_tree(lock, parsed(up))
    plan = make_plan(desired, satisfied(desired))
    assert not plan.pending and plan.describe() == []
    assert plan.reused_blobs == 3


def test_a_tag_moved_to_a_manifest_of_equal_size_is_noticed() -> None:
    up = FakeUpstream()
    one = build_image(up, "app", None, seed="1")
    two = build_image(up, "app", "v1", seed="2")
    assert one.size == two.size
    desired_one = desired_tree(lock_of(locked("app", "v1", one)), parsed(up))
    desired_two = desired_tree(lock_of(locked("app", "v1", two)), parsed(up))
    plan = make_plan(desired_two, satisfied(desired_one))
    (tag,) = plan.tags
    assert (tag.action, tag.old_digest, tag.want.digest) == ("move", one.digest, two.digest)
    assert f"would move tag app:v1 {one.digest} → {two.digest}" in plan.describe()


def test_kind_change_lists_the_stale_twin_and_unlocked_tags_are_removed() -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    listed = lock_of(locked("app", "v1", img), locked("app", "old", img))
    state = satisfied(desired_tree(listed, parsed(up)))
    files = dict(state.files)
    files["v2/app/manifests/v1.~docker-manifest"] = FileInfo(1, 3, 3)
    state = TreeState(
        files=files, manifest_digests=state.manifest_digests, docs=state.docs, store=state.store
    )
    plan = make_plan(desired_tree(lock_of(locked("app", "v1", img)), parsed(up)), state)
    (tag,) = plan.tags
    assert tag.action == "repair" and tag.stale_twins == ("v2/app/manifests/v1.~docker-manifest",)
    assert {r.rel for r in plan.removals} == {
        "v2/app/manifests/old",
        "v2/app/manifests/old.~oci-manifest",
    }


def test_lock_and_manifest_disagreeing_is_an_integrity_error() -> None:
    up = FakeUpstream()
    amd = build_image(up, "multi", None)
    index = build_index(up, "multi", "v1", [amd])
    entry = locked("multi", "v1", index)
    bogus = LockedManifest("linux/arm64", "sha256:" + "a" * 64, amd.media_type, 10)
    with pytest.raises(IntegrityError, match="multi:v1: locked linux/arm64 manifest"):
        desired_tree(Lock("h", (replace(entry, platforms=(bogus,)),)), parsed(up))
    wrong_size = replace(entry, size=entry.size + 1)
    with pytest.raises(IntegrityError, match="the lock says"):
        desired_tree(Lock("h", (wrong_size,)), parsed(up))


def test_missing_manifest_is_an_error_for_sync_and_unknown_for_gc() -> None:
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    with pytest.raises(IntegrityError, match="not available"):
        desired_tree(lock, {})
    assert desired_tree(lock, {}, strict=False).unknown_repos == {"app"}
