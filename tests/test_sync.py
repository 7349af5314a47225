"""`sync` against a fake upstream (tests/support/fake_upstream.py): tree contents, no-op, moves,
faults, resume, --verify, the tree lock and the CLI. Real components: test_sync_e2e.py."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterable
from itertools import zip_longest
from pathlib import Path

import pytest
from support.cli import quiet
from support.fake_upstream import (
    FakeUpstream,
    Interrupted,
    all_blobs,
    build_image,
    build_index,
    lock_of,
    locked,
)
from support.sync import Factory, cli_project, sync, write_project
from support.trees import verify_tree
from testbed.procs import wait_until
from testbed.treeholder import hold_tree

from registrish_lock import cli
from registrish_lock.console import Console
from registrish_lock.errors import BusyError, ExitCode, IntegrityError
from registrish_lock.lock.lockfile import Lock, write_lock
from registrish_lock.oci import mediatypes
from registrish_lock.progress import QuietProgress
from registrish_lock.tree.apply import LazyUpstream, sync_tree
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.plan import BlobFetch
from registrish_lock.tree.store import Fetcher, LocalTreeStore
from registrish_lock.tree.treelock import tree_lock


def four_kinds(up: FakeUpstream) -> Lock:
    oci = build_image(up, "app-oci", "v1", seed="oci")
    docker = build_image(up, "app-docker", "v1", docker=True, seed="docker")
    amd = build_image(up, "multi", None, seed="m-amd", platform="linux/amd64")
    arm = build_image(up, "multi", None, seed="m-arm", platform="linux/arm64")
    s390 = build_image(up, "multi", None, seed="m-s390", platform="linux/s390x")
    index = build_index(up, "multi", "v1", [amd, arm, s390])
    damd = build_image(up, "multi-docker", None, docker=True, seed="d-amd")
    darm = build_image(up, "multi-docker", None, docker=True, seed="d-arm", platform="linux/arm64")
    dlist = build_index(up, "multi-docker", "v1", [damd, darm], docker=True)
    nested = build_image(up, "team/tools/app", "v1", seed="oci")  # same blobs as app-oci
    return lock_of(
        locked("app-oci", "v1", oci),
        locked("app-docker", "v1", docker),
        locked("multi", "v1", index, platforms=["linux/amd64", "linux/arm64"]),
        locked("multi-docker", "v1", dlist),
        locked("team/tools/app", "v1", nested),
    )


def test_tree_contents_for_all_four_kinds_and_a_nested_name(tmp_path: Path) -> None:
    up = FakeUpstream()
    lock = four_kinds(up)
    root = tmp_path / "public"
    result = sync(root, lock, up)
    assert result.plan.pending
    v2 = root / "v2"
    assert (v2 / "index").read_bytes() == b"{}\n"
    assert json.loads((v2 / "_catalog").read_bytes()) == {
        "repositories": ["app-docker", "app-oci", "multi", "multi-docker", "team/tools/app"]
    }
    assert json.loads((v2 / "team/tools/app/tags/list").read_bytes()) == {
        "name": "team/tools/app",
        "tags": ["v1"],
    }
    for tag in lock.tags:
        mdir = v2 / tag.name / "manifests"
        kind = mediatypes.KIND_OF[tag.media_type]
        exact, twin = mdir / tag.tag, mdir / f"{tag.tag}.~{kind}"
        assert exact.read_bytes() == up.manifests[tag.digest]
        assert os.stat(exact).st_ino == os.stat(twin).st_ino  # one inode, two names
        for digest in tag.manifest_digests:
            data = up.manifests[digest]
            media_type = json.loads(data)["mediaType"]
            assert (mdir / digest).read_bytes() == data
            assert (mdir / f"{digest}.~{mediatypes.KIND_OF[media_type]}").exists()
            referrers = json.loads((v2 / tag.name / "referrers" / digest).read_bytes())
            assert referrers == {
                "manifests": [],
                "mediaType": mediatypes.OCI_INDEX,
                "schemaVersion": 2,
            }
            for blob in json.loads(data).get("layers", []):
                path = v2 / tag.name / "blobs" / blob["digest"]
                store = Layout(root).state / "blobs/sha256" / blob["digest"][7:]
                assert os.stat(path).st_ino == os.stat(store).st_ino  # hardlinked, one copy
    # the sparse index: the s390x child is neither stored nor fetched
    index = json.loads(up.manifests[lock.by_key()[("multi", "v1")].digest])
    s390 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "s390x")
    assert not (v2 / "multi/manifests" / s390["digest"]).exists()
    assert ("GET", f"multi/manifests/{s390['digest']}") not in up.requests
    assert verify_tree(root) > 20
    # shared blobs are fetched once
    blob_gets = [p for _, p in up.requests if "/blobs/" in p]
    assert len(blob_gets) == len({p.split("/blobs/")[1] for p in blob_gets})


def test_second_sync_makes_zero_upstream_requests(tmp_path: Path) -> None:
    up = FakeUpstream()
    lock = four_kinds(up)
    sync(tmp_path, lock, up)
    before = up.request_count
    factory = Factory(up)
    result = sync_tree(
        lock=lock,
        layout=Layout(tmp_path),
        upstream=LazyUpstream(factory),
        console=quiet(),
        progress=QuietProgress(),
    )
    assert not result.plan.pending
    assert factory.created == 0 and up.request_count == before
    assert result.stats.upstream_requests == 0 and result.stats.reused > 0


def test_dry_run_writes_nothing_and_reports_pending(tmp_path: Path) -> None:
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    result = sync(tmp_path / "public", lock, up, dry_run=True)
    assert result.plan.pending and len(result.plan.fetches) == 3
    assert not (tmp_path / "public" / "v2").exists()
    lines = result.plan.describe()
    assert lines[0].startswith("Would fetch 3 blobs")
    assert any(line.startswith("would create tag app:v1") for line in lines)


def test_moving_a_tag_to_another_kind_swaps_twins(tmp_path: Path) -> None:
    up = FakeUpstream()
    first = build_image(up, "app", "v1", seed="one")
    sync(tmp_path, lock_of(locked("app", "v1", first)), up)
    mdir = tmp_path / "v2/app/manifests"
    assert (mdir / "v1.~oci-manifest").exists()
    amd = build_image(up, "app", None, seed="two")
    index = build_index(up, "app", "v1", [amd])
    result = sync(tmp_path, lock_of(locked("app", "v1", index)), up)
    (move,) = result.plan.tags
    assert move.action == "move" and move.old_digest == first.digest
    assert (mdir / "v1").read_bytes() == index.data
    assert (mdir / "v1.~oci-index").exists() and not (mdir / "v1.~oci-manifest").exists()
    # old content stays until gc; the tag no longer reaches it
    assert (mdir / first.digest).exists()
    verify_tree(tmp_path)


def test_tags_dropped_from_the_lock_are_removed_and_listed_no_more(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    sync(tmp_path, lock_of(locked("app", "v1", img), locked("app", "old", img)), up)
    assert (tmp_path / "v2/app/manifests/old.~oci-manifest").exists()
    result = sync(tmp_path, lock_of(locked("app", "v1", img)), up)
    assert {r.rel for r in result.plan.removals} == {
        "v2/app/manifests/old",
        "v2/app/manifests/old.~oci-manifest",
        "v2/app/tags/old.~last",  # its `?last=old` page
    }
    assert not (tmp_path / "v2/app/manifests/old").exists()
    assert json.loads((tmp_path / "v2/app/tags/list").read_bytes())["tags"] == ["v1"]


def test_corrupt_upstream_bytes_never_reach_a_final_path(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    bad = img.blobs[-1]
    up.corrupt[bad] = b"\0" * len(up.blobs[bad])  # right size, wrong bytes
    lock = lock_of(locked("app", "v1", img))
    with pytest.raises(IntegrityError, match=rf"app .*{bad}"):
        sync(tmp_path, lock, up)
    assert not (Layout(tmp_path).state / "blobs/sha256" / bad[7:]).exists()
    assert not (tmp_path / "v2/app/manifests").exists()  # no manifest before its blobs
    assert not list((Layout(tmp_path).state / "tmp").glob("*.partial"))
    verify_tree(tmp_path)
    del up.corrupt[bad]  # the upstream heals: a rerun completes
    sync(tmp_path, lock, up)
    assert (tmp_path / "v2/app/manifests/v1").exists()
    verify_tree(tmp_path)


def test_oversized_upstream_blob_is_refused(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    big = img.blobs[-1]
    up.corrupt[big] = up.blobs[big] + b"extra"
    with pytest.raises(IntegrityError, match="expected"):
        sync(tmp_path, lock_of(locked("app", "v1", img)), up)
    assert not (Layout(tmp_path).state / "blobs/sha256" / big[7:]).exists()


def test_interrupted_download_resumes_from_the_partial(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1", layer_sizes=(200_000,))
    layer = img.blobs[-1]
    up.cut_at[layer] = 120_000
    lock = lock_of(locked("app", "v1", img))
    with pytest.raises(Interrupted):
        sync(tmp_path, lock, up)
    partial = Layout(tmp_path).state / "tmp" / f"{layer[7:]}.partial"
    assert partial.stat().st_size == 120_000
    sync(tmp_path, lock, up)
    assert (layer, 120_000) in up.ranges  # resumed, not restarted
    assert not partial.exists()
    verify_tree(tmp_path)


def test_verify_rehashes_and_repairs_a_corrupted_store_blob(tmp_path: Path) -> None:
    up = FakeUpstream()
    img = build_image(up, "app", "v1")
    lock = lock_of(locked("app", "v1", img))
    sync(tmp_path, lock, up)
    store = Layout(tmp_path).state / "blobs/sha256" / img.blobs[0][7:]
    data = bytearray(store.read_bytes())
    data[0] ^= 0xFF
    store.write_bytes(bytes(data))  # same size, same inode: a plain sync cannot tell
    assert not sync(tmp_path, lock, up).plan.pending
    result = sync(tmp_path, lock, up, verify=True)
    assert [f.digest for f in result.plan.fetches] == [img.blobs[0]]
    assert verify_tree(tmp_path) > 0


def test_nested_index_is_mirrored_in_full(tmp_path: Path) -> None:
    up = FakeUpstream()
    a = build_image(up, "app", None, seed="a")
    b = build_image(up, "app", None, seed="b", platform="linux/arm64")
    inner = build_index(up, "app", None, [a, b], platform="linux/amd64")
    c = build_image(up, "app", None, seed="c", platform="linux/ppc64le")
    outer = build_index(up, "app", "v1", [inner, c])
    result = sync(tmp_path, lock_of(locked("app", "v1", outer, platforms=["linux/amd64"])), up)
    order = [m.want.digest for m in result.plan.manifests]
    assert order.index(a.digest) < order.index(inner.digest) < order.index(outer.digest)
    assert c.digest not in order
    assert all((tmp_path / "v2/app/blobs" / d).exists() for d in all_blobs(inner))
    verify_tree(tmp_path)


def test_non_distributable_layers_are_not_fetched(tmp_path: Path) -> None:
    up = FakeUpstream()
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": "sha256:" + "f" * 64,
        "size": 1234,
        "urls": ["https://example.invalid/layer"],
    }
    img = build_image(up, "win", "v1", docker=True, extra_layers=(foreign,))
    result = sync(tmp_path, lock_of(locked("win", "v1", img)), up)
    assert [f.digest for f in result.plan.foreign] == [foreign["digest"]]
    assert not (tmp_path / "v2/win/blobs" / str(foreign["digest"])).exists()
    assert (tmp_path / "v2/win/manifests/v1").exists()


def test_malformed_descriptor_digest_is_refused_naming_the_image(tmp_path: Path) -> None:
    up = FakeUpstream()
    bad = {"mediaType": "x/y", "digest": "sha256:../../etc", "size": 1}
    img = build_image(up, "app", "v1", extra_layers=(bad,))
    with pytest.raises(IntegrityError, match=r"app:v1: .*digest"):
        sync(tmp_path, lock_of(locked("app", "v1", img)), up)
    assert not (tmp_path / "v2").exists() or not list((tmp_path / "v2").rglob("*"))


# --- the tree lock ---------------------------------------------------------------------


def test_tree_lock_no_wait_raises_busy_naming_the_holder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with (
        tree_lock(layout, quiet()),
        pytest.raises(BusyError, match=f"pid {os.getpid()}"),
        tree_lock(layout, quiet(), wait=False),
    ):
        pass  # pragma: no cover


def test_tree_lock_waits_with_a_message_then_proceeds(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    events: list[str] = []
    console = Console(out=io.StringIO(), err=io.StringIO())
    held = threading.Event()

    def holder() -> None:
        with tree_lock(layout, quiet()):
            held.set()
            # let go only once the second one waits (it says so before it blocks)
            assert wait_until(lambda: "waiting for pid" in console.err.getvalue())  # type: ignore[attr-defined]
            events.append("first done")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(30)
    with tree_lock(layout, console):
        events.append("second in")
    thread.join()
    assert events == ["first done", "second in"]
    assert "waiting for pid" in console.err.getvalue()  # type: ignore[attr-defined]


def test_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with hold_tree(layout.root) as holder:
        with pytest.raises(BusyError), tree_lock(layout, quiet(), wait=False):
            pass  # pragma: no cover
        holder.kill()
        holder.wait()
        assert layout.lock_file.read_text().strip() == str(holder.pid)  # left behind
    with tree_lock(layout, quiet(), wait=False):
        assert layout.lock_file.read_text().strip() == str(os.getpid())


# --- the command line ------------------------------------------------------------------


def test_cli_refuses_a_stale_lock_unless_frozen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = write_project(tmp_path)
    write_lock(config.with_suffix(".lock"), Lock("sha256:" + "1" * 64, ()))
    assert cli.main(["sync", "-c", str(config)]) == ExitCode.PENDING
    err = capsys.readouterr().err
    assert "stale" in err and "hint: run `registrish lock`" in err
    assert cli.main(["sync", "-c", str(config), "--frozen"]) == ExitCode.OK
    assert json.loads((tmp_path / "public/v2/_catalog").read_bytes()) == {"repositories": []}


def test_cli_dry_run_exit_codes_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config = cli_project(tmp_path, monkeypatch)
    assert cli.main(["sync", "-c", str(config), "--dry-run"]) == ExitCode.PENDING
    out = capsys.readouterr().out
    assert "Would fetch 3 blobs" in out and "would create tag app:v1" in out
    assert cli.main(["sync", "-c", str(config), "--json"]) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["fetched_blobs"] == 3 and doc["plan"]["pending"]
    assert cli.main(["sync", "-c", str(config), "--dry-run"]) == ExitCode.OK
    assert "up to date" in capsys.readouterr().out


def test_rich_and_plain_progress_report_every_blob(tmp_path: Path) -> None:
    from registrish_lock.progress import PlainProgress, RichProgress

    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    for name, make in (("rich", RichProgress), ("plain", PlainProgress)):
        console = Console(out=io.StringIO(), err=io.StringIO())
        sync_tree(
            lock=lock,
            layout=Layout(tmp_path / name),
            upstream=LazyUpstream(Factory(up)),
            console=console,
            progress=make(console),
        )
        err = console.err.getvalue()  # type: ignore[attr-defined]
        assert "3 blobs" in err, (name, err)
    assert err.count("fetched app@sha256:") == 3  # plain: one line per blob


class _Recording(LocalTreeStore):
    """The local store, recording what `apply` asks of it and in which order."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout)
        self.events: list[tuple[str, str]] = []
        self._events_lock = threading.Lock()

    def _note(self, what: str, name: str) -> None:
        with self._events_lock:
            self.events.append((what, name))

    def place_blob(self, item: BlobFetch, fetch: Fetcher) -> None:
        super().place_blob(item, fetch)
        self._note("placed", item.digest)

    def link_blob(self, rel: str, digest: str) -> None:
        self._note("link", digest)
        super().link_blob(rel, digest)

    def write_manifest(
        self, rel: str, twin_rel: str, data: bytes, stale_twins: Iterable[str] = ()
    ) -> None:
        self._note("manifest", rel)
        super().write_manifest(rel, twin_rel, data, stale_twins)


def test_a_blobs_links_are_made_once_it_is_placed_and_all_before_a_manifest(
    tmp_path: Path,
) -> None:
    """A blob's other names are made as soon as it is in place (a bucket's server-side
    copies overlap the other downloads), never before, and every one before the first
    manifest; downloads go largest, smallest, next largest, ..."""
    up = FakeUpstream()
    lock = four_kinds(up)
    store = _Recording(Layout(tmp_path))
    result = sync_tree(
        lock=lock,
        layout=store,
        upstream=LazyUpstream(Factory(up)),
        console=quiet(),
        progress=QuietProgress(),
        jobs=1,  # one download at a time: the order is the plan's
    )
    events = store.events
    placed = [name for what, name in events if what == "placed"]
    sizes = {f.digest: f.size for f in result.plan.fetches}
    by_size = sorted(sizes.values(), reverse=True)
    half = (len(by_size) + 1) // 2
    expected = [s for pair in zip_longest(by_size[:half], by_size[half:][::-1]) for s in pair]
    assert [sizes[d] for d in placed] == [s for s in expected if s is not None]
    first_manifest = next(i for i, (what, _) in enumerate(events) if what == "manifest")
    links = [i for i, (what, _) in enumerate(events) if what == "link"]
    assert links and max(links) < first_manifest
    for i, (what, digest) in enumerate(events):
        if what == "link":
            assert ("placed", digest) in events[:i], f"{digest} linked before it was placed"
    # each blob's links come right after it, while the other blobs are still to download
    for digest in placed:
        at = events.index(("placed", digest))
        assert events[at + 1] == ("link", digest)
