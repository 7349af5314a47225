"""`registrish publish` sends a blob several repositories share once and copies its other
keys inside the bucket: the plan, the order (a copy after its source's upload, before any
manifest) with the in-memory store, and one run against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.buckets import bucket_listing, s3_client
from support.memory_bucket import POLICY, MemoryStore, run_publish, sha256_of
from support.trees import build_tree
from testbed.s3 import SeaweedS3, aws_environment

from registrish_lock.bucket import client as s3client
from registrish_lock.bucket.client import RemoteObject
from registrish_lock.bucket.target import S3Target
from registrish_lock.cli import main
from registrish_lock.commands import publish as publish_cmd
from registrish_lock.errors import IntegrityError
from registrish_lock.serving.publish import SINGLE_PUT_MAX, PublishResult, collect_objects
from registrish_lock.serving.publish_plan import LocalObject, Phase, plan_publish
from registrish_lock.serving.routes import IMMUTABLE, OCTET_STREAM
from registrish_lock.tree.layout import Layout

EXTRA = "zz-extra"  # sorts after every repository of `build_tree`: its keys are the copies


def blob(repo: str, digest: str, size: int = 10) -> LocalObject:
    key = f"v2/{repo}/blobs/{digest}"
    return LocalObject(Phase.BLOBS, key, key, size, OCTET_STREAM, IMMUTABLE, digest=digest)


def shared_tree(root: Path) -> dict[str, Path]:
    """`build_tree` plus a repository whose blobs are hard links of app-oci's, and a blob
    over `SINGLE_PUT_MAX` (streamed by `put_file`) in both. Returns digest → app-oci file."""
    build_tree(root)
    big = os.urandom(SINGLE_PUT_MAX + 12345)
    source = root / "v2" / "app-oci" / "blobs"
    (source / sha256_of(big)).write_bytes(big)
    extra = root / "v2" / EXTRA / "blobs"
    extra.mkdir(parents=True)
    files = {p.name: p for p in source.iterdir()}
    for name, path in files.items():
        os.link(path, extra / name)
    return files


def run(root: Path, store: MemoryStore, **kwargs: Any) -> PublishResult:
    return run_publish(root, store, S3Target("bucket", "reg"), **kwargs)


def test_plan_copies_a_digest_from_this_run_or_from_a_trusted_key() -> None:
    a, b, c = (blob(r, "sha256:" + "a" * 64) for r in ("a", "b", "c"))
    plan = plan_publish([c, b, a], {})
    assert [u.obj.key for u in plan.uploads] == [a.key]
    assert [(x.obj.key, x.source, x.reason) for x in plan.copies] == [
        (b.key, a.key, "new"),
        (c.key, a.key, "new"),
    ]
    assert (plan.upload_bytes, plan.copy_bytes) == (10, 20) and plan.pending

    # b is in the bucket with the right size: nothing is sent, a and c are copies of b
    remote = {b.key: RemoteObject(b.key, 10, "etag")}
    trusting = plan_publish([a, b, c], remote)
    assert trusting.uploads == () and trusting.unchanged == 1
    assert [(x.obj.key, x.source) for x in trusting.copies] == [(a.key, b.key), (c.key, b.key)]
    lines = trusting.describe(S3Target("bk"))
    assert lines[0] == "Would upload 0 objects (0 B) to s3://bk; copy 2 in the bucket (20 B); " + (
        "1 unchanged (10 B)"
    )
    assert f"    would copy {a.key} from {b.key} (10 B, new)" in lines
    doc = trusting.to_json()
    assert doc["copy"][0] == {"key": a.key, "source": b.key, "size": 10, "reason": "new"}
    assert doc["upload"] == [] and doc["copy_bytes"] == 20

    # a wrong size is no source; --force trusts nothing remote but still copies in the run
    assert plan_publish([a, b], {b.key: RemoteObject(b.key, 9, "e")}).uploads[0].obj == a
    forced = plan_publish([a, b, c], remote, force=True)
    assert [u.obj.key for u in forced.uploads] == [a.key]
    assert [(x.source, x.reason) for x in forced.copies] == [(a.key, "forced"), (a.key, "new")]
    # only blobs are copied: manifests by digest are small and go up as before
    digest = "sha256:" + "d" * 64
    manifests = [
        LocalObject(Phase.MANIFESTS, f"v2/{r}/manifests/{digest}", "x", 5, "t", "c", digest=digest)
        for r in ("a", "b")
    ]
    assert len(plan_publish(manifests, {}).uploads) == 2


def test_a_shared_blob_is_uploaded_once_and_copied_before_the_manifests(tmp_path: Path) -> None:
    files = shared_tree(tmp_path)
    store = MemoryStore()
    result = run(tmp_path, store)
    extra_keys = {f"reg/v2/{EXTRA}/blobs/{name}" for name in files}
    assert set(store.copies) == extra_keys and not extra_keys & set(store.puts)
    assert (result.stats.copied, result.stats.uploaded) == (len(files), len(store.puts))
    assert result.stats.copied_bytes == sum(p.stat().st_size for p in files.values())
    # each copy after its source's upload, every copy before the first manifest
    order = [e[1] for e in store.events]
    for event in store.events:
        if event[0] == "copy":
            assert order.index(event[2]) < order.index(event[1]), event
    first_manifest = min(i for i, k in enumerate(order) if "/manifests/" in k)
    assert max(i for i, e in enumerate(store.events) if e[0] == "copy") < first_manifest
    # the copy carries what an upload of the same file carries
    for name in files:
        original = store.objects[f"reg/v2/app-oci/blobs/{name}"]
        assert store.objects[f"reg/v2/{EXTRA}/blobs/{name}"] == original
        assert store.metadata[f"reg/v2/{EXTRA}/blobs/{name}"] == name
    assert f"copied {len(files)} in the bucket (" in result.stats.summary()
    assert result.stats.to_json()["copied"] == len(files)

    again = run(tmp_path, store)
    assert not again.plan.pending and (again.stats.uploaded, again.stats.copied) == (0, 0)
    # a key lost from the bucket is copied from one that is still there, nothing sent
    lost = sorted(extra_keys)[0]
    store.delete([lost])
    store.puts.clear()
    repaired = run(tmp_path, store)
    assert store.puts == [] and store.copies[-1] == lost
    assert store.events[-1] == ("copy", lost, lost.replace(EXTRA, "app-oci"))
    assert repaired.stats.copied == 1


def test_a_damaged_duplicate_is_never_read_and_a_damaged_source_stops_the_run(
    tmp_path: Path,
) -> None:
    """All keys of a digest are one hard-linked store file; if the copy's own file differs
    on disk it is not read (the bucket gets the verified upload's bytes), and if the
    uploaded one is damaged, the run fails in the blob phase and nothing is copied."""
    files = shared_tree(tmp_path)
    name, good = max(files.items(), key=lambda kv: kv[1].stat().st_size)  # put_file's path
    data = good.read_bytes()
    damaged = data[:-1] + bytes([data[-1] ^ 0xFF])
    copy_file = tmp_path / "v2" / EXTRA / "blobs" / name
    copy_file.unlink()  # break the link: this file alone differs
    copy_file.write_bytes(damaged)
    store = MemoryStore()
    run(tmp_path, store)
    assert store.objects[f"reg/v2/{EXTRA}/blobs/{name}"][0] == data

    store = MemoryStore()
    copy_file.unlink()
    os.link(good, copy_file)
    good.unlink()  # now the uploaded key's file is the damaged one
    good.write_bytes(damaged)
    with pytest.raises(IntegrityError, match="do not match the name"):
        run(tmp_path, store)
    assert store.copies == [] and not any("/manifests/" in k for k in store.puts)


def test_cli_dry_run_and_json_say_what_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = shared_tree(tmp_path / "public")
    config = tmp_path / "registrish.toml"
    config.write_text('[registry]\nroot = "public"\n')
    store = MemoryStore()
    monkeypatch.setattr(publish_cmd, "open_store", lambda target, **_: store)
    base = ["publish", "-c", str(config), "s3://bkt"]
    assert main([*base, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert f"copy {len(files)} in the bucket (" in out.splitlines()[0]
    assert f"would copy v2/{EXTRA}/blobs/" in out and store.events == []
    assert main([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["copied"] == len(store.copies) == len(files)
    assert doc["summary"]["uploaded"] == len(store.puts)
    assert len(doc["plan"]["copy"]) == len(files)
    assert main(base) == 0
    assert "up to date: uploaded 0 objects" in capsys.readouterr().err


# --- a real S3 server ------------------------------------------------------------------------


@pytest.mark.slow
def test_publish_to_seaweedfs_uploads_a_shared_blob_once_and_copies_it(
    seaweed: SeaweedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_environment(monkeypatch, tmp_path, seaweed, endpoint=False)
    files = shared_tree(tmp_path / "public")
    config = tmp_path / "registrish.toml"
    config.write_text('[registry]\nroot = "public"\n')
    sent: list[tuple[str, str]] = []  # (operation, key) as botocore sends them
    real_open = s3client.open_store

    def open_store(*args: Any, **kwargs: Any) -> s3client.Boto3Store:
        store = real_open(*args, **kwargs)
        for op in ("PutObject", "CreateMultipartUpload", "CopyObject", "UploadPartCopy"):

            def record(params: dict[str, Any], op: str = op, **_: Any) -> None:
                sent.append((op, params["Key"]))

            store.client.meta.events.register(f"provide-client-params.s3.{op}", record)
        return store

    monkeypatch.setattr(publish_cmd, "open_store", open_store)
    argv = ["publish", "-c", str(config), f"s3://{seaweed.bucket}", "--json"]
    argv += ["--endpoint-url", seaweed.api_url, "--addressing-style", "path"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    copied = sorted(k for op, k in sent if op == "CopyObject")
    assert copied == sorted(f"v2/{EXTRA}/blobs/{name}" for name in files)
    uploaded = [k for op, k in sent if op in ("PutObject", "CreateMultipartUpload")]
    assert not any(f"/{EXTRA}/" in k for k in uploaded)
    assert sum(f"/blobs/{name}" in k for k in uploaded for name in files) == len(files)
    assert doc["summary"]["copied"] == len(files)

    client = s3_client(seaweed)
    for name, path in files.items():
        original = client.get_object(Bucket=seaweed.bucket, Key=f"v2/app-oci/blobs/{name}")
        got = client.get_object(Bucket=seaweed.bucket, Key=f"v2/{EXTRA}/blobs/{name}")
        assert got["Body"].read() == path.read_bytes()
        assert (got["ContentType"], got["CacheControl"]) == (OCTET_STREAM, IMMUTABLE)
        assert got["Metadata"] == original["Metadata"] == {"sha256": name}
    keys = set(bucket_listing(seaweed))
    assert {o.key for o in collect_objects(Layout(tmp_path / "public"), POLICY)} <= keys | {"v2/"}

    sent.clear()
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert sent == [] and not again["plan"]["pending"]
    assert (again["summary"]["uploaded"], again["summary"]["copied"]) == (0, 0)
