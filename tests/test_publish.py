"""`registrish publish`: the pure plan, the tree walk and the executor with an in-memory
store (fast, no server). The real-S3 tests are in test_publish_e2e.py."""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from support.buckets import expected_bucket
from support.memory_bucket import POLICY, MemoryStore, md5, run_publish
from support.trees import build_tree

from registrish_lock.bucket.client import MissingExtraError, RemoteObject, open_store
from registrish_lock.bucket.target import S3Target, parse_s3_url
from registrish_lock.cli import main
from registrish_lock.commands import publish as publish_cmd
from registrish_lock.console import Console
from registrish_lock.errors import ExitCode, IntegrityError, RegistrishError
from registrish_lock.serving.publish import collect_objects
from registrish_lock.serving.publish_plan import (
    PING_KEY,
    LocalObject,
    Phase,
    TreeError,
    objects_in_tree,
    plan_publish,
)
from registrish_lock.serving.routes import IMMUTABLE, JSON, OCTET_STREAM
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.state import MAX_DOC_BYTES, FileInfo, TreeState
from registrish_lock.tree.treelock import tree_lock

# --- target URL ------------------------------------------------------------------------------


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://my-bucket") == S3Target("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/") == S3Target("my-bucket", "")
    target = parse_s3_url("s3://my.bucket/a/b/")
    assert target == S3Target("my.bucket", "a/b")
    assert target.key("v2/") == "a/b/v2/"
    assert target.list_prefix == "a/b/"
    assert str(target) == "s3://my.bucket/a/b"
    for bad in ("http://x/y", "s3://", "s3://UPPER", "s3://ab", "s3://b/a//c", "s3://bkt/../x"):
        with pytest.raises(RegistrishError):
            parse_s3_url(bad)


# --- the tree walk ---------------------------------------------------------------------------


def test_collect_objects_matches_the_tree_and_the_route_table(tmp_path: Path) -> None:
    built = build_tree(tmp_path)
    (tmp_path / "_headers").write_text("host config")  # host configs never leave
    objects = collect_objects(built.layout, POLICY)
    by_key = {o.key: o for o in objects}
    expected = expected_bucket(tmp_path)
    assert set(by_key) == set(expected)
    assert not any(".registrish" in k or ".~" in k for k in by_key)
    for key, (data, ctype) in expected.items():
        obj = by_key[key]
        assert obj.content_type == ctype, key
        assert obj.size == len(data)
        assert (tmp_path / obj.source).read_bytes() == data
    digest, media_type = built.refs["multi:v1"]
    by_digest = by_key[f"v2/multi/manifests/{digest}"]
    assert (by_digest.phase, by_digest.cache_control, by_digest.digest) == (
        Phase.MANIFESTS,
        IMMUTABLE,
        digest,
    )
    assert by_key["v2/multi/manifests/v1"].content_type == media_type
    assert by_key["v2/multi/manifests/v1"].cache_control == "public, max-age=60"
    assert by_key["v2/multi/manifests/v1"].md5 == md5(by_digest_bytes(tmp_path, by_digest))
    assert by_key[PING_KEY].phase is Phase.PING and by_key[PING_KEY].source == "v2/index"
    # sorted in upload order
    assert [o.phase for o in objects] == sorted(o.phase for o in objects)


def by_digest_bytes(root: Path, obj: LocalObject) -> bytes:
    return (root / obj.source).read_bytes()


def test_a_manifest_without_its_twin_is_refused(tmp_path: Path) -> None:
    build_tree(tmp_path)
    (twin,) = (tmp_path / "v2" / "app-docker" / "manifests").glob("v1.~*")
    twin.unlink()
    with pytest.raises(TreeError, match="no typed twin"):
        collect_objects(Layout(tmp_path), POLICY)


def test_a_stale_twin_of_another_kind_is_ignored(tmp_path: Path) -> None:
    built = build_tree(tmp_path)
    manifests = tmp_path / "v2" / "app-docker" / "manifests"
    (manifests / "v1.~oci-index").write_bytes(b'{"old": true}')  # left by a crash
    obj = {o.key: o for o in collect_objects(built.layout, POLICY)}["v2/app-docker/manifests/v1"]
    assert obj.content_type == built.refs["app-docker:v1"][1]


def test_objects_in_tree_is_pure() -> None:
    """The observed state is all it reads: the root does not even exist."""
    digest = "sha256:" + "c" * 64
    state = TreeState(
        files={
            f"v2/a/manifests/{digest}": FileInfo(3, 1, 1),
            f"v2/a/manifests/{digest}.~oci-manifest": FileInfo(3, 1, 1),  # same inode
            "v2/a/manifests/v1": FileInfo(3, 1, 1),
            "v2/a/manifests/v1.~oci-manifest": FileInfo(3, 1, 1),
            "v2/.hidden/x/tags/list": FileInfo(1, 1, 2),  # hidden directories stay local
        }
    )
    asked: list[str] = []

    def md5_of(rel: str) -> str:
        asked.append(rel)
        return "m" * 32

    layout = Layout(Path("/nonexistent-root"))
    objects = objects_in_tree(layout, state, {"index.html": 5}, POLICY, md5_of)
    assert [(o.phase, o.key, o.md5) for o in objects] == [
        (Phase.MANIFESTS, f"v2/a/manifests/{digest}", None),
        (Phase.TAGS, "v2/a/manifests/v1", "m" * 32),
        (Phase.BROWSE, "index.html", "m" * 32),
    ]
    assert sorted(asked) == ["index.html", "v2/a/manifests/v1"]  # mutable objects only


def test_a_tags_list_too_big_to_observe_is_read_for_its_md5(tmp_path: Path) -> None:
    build_tree(tmp_path)
    tags_list = tmp_path / "v2" / "app-oci" / "tags" / "list"
    tags_list.chmod(0o644)
    data = json.dumps({"name": "app-oci", "tags": [f"t{i}" for i in range(MAX_DOC_BYTES // 6)]})
    tags_list.write_text(data)
    assert tags_list.stat().st_size > MAX_DOC_BYTES
    obj = {o.key: o for o in collect_objects(Layout(tmp_path), POLICY)}["v2/app-oci/tags/list"]
    assert obj.md5 == md5(data.encode()) and obj.size == len(data)


def test_a_twin_that_is_a_copy_is_matched_by_its_bytes(tmp_path: Path) -> None:
    built = build_tree(tmp_path)
    (twin,) = (tmp_path / "v2" / "app-docker" / "manifests").glob("v1.~*")
    data = twin.read_bytes()
    twin.unlink()
    twin.write_bytes(data)  # another inode (a filesystem without hardlinks)
    obj = {o.key: o for o in collect_objects(built.layout, POLICY)}["v2/app-docker/manifests/v1"]
    assert obj.content_type == built.refs["app-docker:v1"][1]


def test_no_tree_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="no tree to publish") as info:
        collect_objects(Layout(tmp_path / "nothing"), POLICY)
    assert info.value.hint == "run `registrish sync` first"


# --- the plan (pure) ------------------------------------------------------------------------


def obj(
    key: str, phase: Phase, size: int, *, digest: str | None = None, data: bytes = b""
) -> LocalObject:
    return LocalObject(
        phase, key, key, size, "t", "c", digest=digest, md5=None if digest else md5(data)
    )


BB = "v2/b/blobs/sha256:" + "b" * 64


def test_plan_compares_immutable_by_size_and_mutable_by_md5() -> None:
    blob = obj("v2/a/blobs/sha256:aa", Phase.BLOBS, 10, digest="sha256:aa")
    tag = obj("v2/a/manifests/v1", Phase.TAGS, 3, data=b"new")
    tags_list = obj("v2/a/tags/list", Phase.TAG_LISTS, 4, data=b"list")
    remote = {
        "v2/a/blobs/sha256:aa": RemoteObject("v2/a/blobs/sha256:aa", 10, "whatever"),
        "v2/a/manifests/v1": RemoteObject("v2/a/manifests/v1", 3, md5(b"old")),
        "v2/a/tags/list": RemoteObject("v2/a/tags/list", 0, md5(b"list")),  # size ignored
        BB: RemoteObject(BB, 5, "x"),
        "v2/b/manifests/v1": RemoteObject("v2/b/manifests/v1", 5, "x"),
        "robots.txt": RemoteObject("robots.txt", 5, "x"),
    }
    plan = plan_publish([tags_list, tag, blob], remote)
    assert [(u.obj.key, u.reason) for u in plan.uploads] == [("v2/a/manifests/v1", "changed")]
    assert (plan.unchanged, plan.unchanged_bytes) == (2, 14)
    assert plan.deletes == () and len(plan.extra) == 3
    assert plan.pending

    deleting = plan_publish([tags_list, tag, blob], remote, delete=True)
    # tags before blobs; keys that are no registry path last
    assert [d.key for d in deleting.deletes] == [
        "v2/b/manifests/v1",
        BB,
        "robots.txt",
    ]
    forced = plan_publish([tags_list, tag, blob], remote, force=True)
    assert {u.reason for u in forced.uploads} == {"forced"}
    assert len(forced.uploads) == 3


def test_plan_orders_uploads_by_phase_and_describes_bytes() -> None:
    local = [
        obj(PING_KEY, Phase.PING, 2, data=b"{}"),
        obj("v2/a/manifests/v1", Phase.TAGS, 3, data=b"tag"),
        obj("v2/a/manifests/sha256:cc", Phase.MANIFESTS, 3, digest="sha256:cc"),
        obj("v2/a/blobs/sha256:aa", Phase.BLOBS, 2048, digest="sha256:aa"),
        obj("v2/_catalog", Phase.CATALOG, 5, data=b"names"),
        obj("v2/a/referrers/sha256:cc", Phase.REFERRERS, 7, data=b"refs..."),
        obj("v2/a/tags/list", Phase.TAG_LISTS, 4, data=b"list"),
        obj("index.html", Phase.BROWSE, 1, data=b"<"),
        obj(f"browse/{'ab' * 32}.json", Phase.BROWSE_DATA, 2, data=b"{}"),
    ]
    plan = plan_publish(local, {})
    assert [u.obj.phase for u in plan.uploads] == sorted(Phase)
    assert plan.upload_bytes == 2 + 3 + 3 + 2048 + 5 + 7 + 4 + 1 + 2
    lines = plan.describe(S3Target("b", "p"))
    assert lines[0] == "Would upload 9 objects (2.0 KiB) to s3://b/p; 0 unchanged (0 B)"
    assert "  blobs: 1 (2.0 KiB)" in lines
    doc = plan.to_json()
    assert doc["upload_bytes"] == plan.upload_bytes and doc["pending"] is True
    assert doc["upload"][0]["phase"] == "blobs"
    assert not plan_publish(
        local, {k.key: RemoteObject(k.key, k.size, k.md5 or "") for k in local}
    ).pending


# --- execution against the in-memory store -------------------------------------------------


def test_publish_uploads_everything_in_order_then_nothing(tmp_path: Path) -> None:
    build_tree(tmp_path)
    store = MemoryStore()
    result = run_publish(tmp_path, store, S3Target("bucket", "reg"))
    expected = expected_bucket(tmp_path)
    assert {k.removeprefix("reg/"): (v[0], v[1]) for k, v in store.objects.items()} == expected
    phases = [
        {o.key: o.phase for o in collect_objects(Layout(tmp_path), POLICY)}[k.removeprefix("reg/")]
        for k in store.puts
    ]
    assert phases == sorted(phases)  # never a tag before its manifest and blobs
    assert result.stats.uploaded == len(expected) == len(store.puts)

    store.puts.clear()
    again = run_publish(tmp_path, store, S3Target("bucket", "reg"))
    assert store.puts == [] and not again.plan.pending
    assert again.stats.unchanged == len(expected)
    assert store.lists == 2  # one listing per run


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    build_tree(tmp_path)
    store = MemoryStore()
    store.objects["v2/old"] = (b"x", "t", "c")
    result = run_publish(tmp_path, store, dry_run=True, delete=True)
    assert result.plan.pending and [d.key for d in result.plan.deletes] == ["v2/old"]
    assert store.puts == [] and store.deletes == [] and "v2/old" in store.objects


def test_interrupted_publish_keeps_order_and_converges(tmp_path: Path) -> None:
    build_tree(tmp_path)
    all_objects = {o.key: o.phase for o in collect_objects(Layout(tmp_path), POLICY)}
    store = MemoryStore(fail_after=5)
    with pytest.raises(RegistrishError, match="injected failure"):
        run_publish(tmp_path, store)
    assert 0 < len(store.objects) < len(all_objects)
    # whatever got in, every object of an earlier phase is in too
    present = {all_objects[k] for k in store.objects}
    for key, phase in all_objects.items():
        if phase < max(present):
            assert key in store.objects, key
    store.fail_after = None
    first = len(store.puts)
    run_publish(tmp_path, store)
    assert {k: (v[0], v[1]) for k, v in store.objects.items()} == expected_bucket(tmp_path)
    assert len(store.puts) == len(all_objects)  # nothing uploaded twice
    assert first == 5


def test_delete_runs_after_uploads_and_tags_first(tmp_path: Path) -> None:
    build_tree(tmp_path)
    store = MemoryStore()
    stale_blob = "v2/gone/blobs/sha256:" + "0" * 64
    store.objects[stale_blob] = (b"old", OCTET_STREAM, IMMUTABLE)
    store.objects["v2/gone/manifests/v9"] = (b"old", "t", "c")
    store.objects["v2/gone/tags/list"] = (b"old", JSON, "c")
    events: list[str] = []
    real_delete, real_put = store.delete, store._put

    def put(*args: Any) -> None:
        events.append("put")
        real_put(*args)

    def delete(keys: Sequence[str]) -> None:
        events.append("delete")
        assert list(keys) == ["v2/gone/tags/list", "v2/gone/manifests/v9", stale_blob]
        real_delete(keys)

    store._put = put  # type: ignore[method-assign,assignment]
    store.delete = delete  # type: ignore[method-assign]
    result = run_publish(tmp_path, store, delete=True)
    assert events[-1] == "delete" and events.count("delete") == 1 and "put" in events
    assert result.stats.deleted == 3
    assert {k: (v[0], v[1]) for k, v in store.objects.items()} == expected_bucket(tmp_path)


def test_a_corrupt_blob_is_never_uploaded(tmp_path: Path) -> None:
    build_tree(tmp_path)
    blob = next((tmp_path / "v2" / "app-oci" / "blobs").iterdir())
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))  # a hardlink: the store copy rots too
    store = MemoryStore()
    with pytest.raises(IntegrityError, match="do not match the name") as info:
        run_publish(tmp_path, store)
    assert "sync --verify" in (info.value.hint or "")
    assert not any(k.endswith(blob.name) and "app-oci" in k for k in store.puts)
    assert not any("/manifests/" in k for k in store.puts)  # the blob phase failed


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "boto3" or name.startswith(("boto3.", "botocore")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingExtraError) as info:
        open_store(S3Target("bucket"))
    assert info.value.hint == "pip install 'registrish[s3]'"


# --- the command line (in-memory store) ------------------------------------------------------


@pytest.fixture
def cli_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, MemoryStore]:
    """A built tree, a config pointing at it, and `open_store` answering a MemoryStore."""
    build_tree(tmp_path / "public")
    config = tmp_path / "registrish.toml"
    config.write_text('[registry]\nroot = "public"\n')
    store = MemoryStore()
    opened: list[dict[str, Any]] = []

    def fake_open(target: S3Target, **kwargs: Any) -> MemoryStore:
        opened.append({"target": target, **kwargs})
        return store

    monkeypatch.setattr(publish_cmd, "open_store", fake_open)
    store.opened = opened  # type: ignore[attr-defined]
    return config, store


def test_cli_dry_run_then_publish_then_up_to_date(
    cli_tree: tuple[Path, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    config, store = cli_tree
    base = ["publish", "-c", str(config), "s3://bkt/reg", "--endpoint-url", "http://x:1"]
    assert main([*base, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("Would upload ") and "to s3://bkt/reg" in out
    assert "would upload v2/app-oci/manifests/v1 (" in out and store.puts == []
    assert store.opened[0]["endpoint_url"] == "http://x:1"  # type: ignore[attr-defined]
    assert store.opened[0]["target"] == S3Target("bkt", "reg")  # type: ignore[attr-defined]

    store.closed = False
    assert main([*base, "--json", "-j", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["uploaded"] == len(store.puts) > 0
    assert store.closed  # its part senders stopped
    assert all(k.startswith("reg/v2/") for k in store.puts)

    assert main([*base, "--dry-run"]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_cli_waits_for_or_refuses_a_locked_tree(
    cli_tree: tuple[Path, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    config, store = cli_tree
    layout = Layout(config.parent / "public")
    with tree_lock(layout, Console(verbosity=-1)):
        code = main(["publish", "-c", str(config), "s3://bkt", "--no-wait"])
    assert code == ExitCode.BUSY and store.puts == []
    assert "locked" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(
    cli_tree: tuple[Path, MemoryStore], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = cli_tree
    assert main(["publish", "-c", str(config), "https://bucket"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "error: 'https://bucket' is not an s3:// URL" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # argparse refuses it, as every bad option
        main(["publish", "-c", str(config), "s3://bkt", "-j", "0"])
    assert info.value.code == ExitCode.USAGE
    assert "-j/--jobs: must be at least 1, not 0" in capsys.readouterr().err
