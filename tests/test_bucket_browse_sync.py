"""The browse page in a bucket tree on a real S3 server (SeaweedFS on loopback): written by
`sync` with publish's headers, rewritten only when its bytes change (a no-op stays at 2
bucket requests), old data files deleted after the page that named them; and
`sync --verify` re-hashing the bucket's blobs in parallel. Real processes: marked slow."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from support.buckets import env_client, env_objects, layout_config, run_json, two_image_mirror
from testbed.images import write_random_image
from testbed.s3 import SeaweedS3

from registrish_lock.bucket.browse import BrowseWrites
from registrish_lock.bucket.state import STATE_REL
from registrish_lock.bucket.store import BucketStore
from registrish_lock.cli import main

pytestmark = pytest.mark.slow

IMMUTABLE = "public, max-age=31536000, immutable"
PREFIX = "mirror/"


client, objects = env_client, env_objects


def data_files(seaweed: SeaweedS3) -> set[str]:
    return {k for k in objects(seaweed) if k.startswith(PREFIX + "browse/")}


def named_by_page(seaweed: SeaweedS3) -> set[str]:
    page = client().get_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html")
    text = page["Body"].read().decode()
    return {PREFIX + m for m in re.findall(r'data-src="(browse/[a-f0-9]{64}\.json)"', text)}


def test_the_browse_page_follows_the_lock_and_a_noop_leaves_it(
    seaweed: SeaweedS3,
    seaweed_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = two_image_mirror(tmp_path, seaweed.bucket, 11)
    assert main(["sync", "-c", str(config)]) == 0
    s3 = client()
    page = s3.get_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html")
    assert page["ContentType"] == "text/html; charset=utf-8"
    assert page["CacheControl"] == "public, max-age=60"
    first = data_files(seaweed)
    assert len(first) == 2 and named_by_page(seaweed) == first  # one per repository
    for key in first:
        got = s3.get_object(Bucket=seaweed.bucket, Key=key)
        assert got["ContentType"] == "application/json" and got["CacheControl"] == IMMUTABLE
        doc = json.loads(got["Body"].read())
        assert doc["tags"][0][0] == "v1" and doc["tags"][0][6][0][0] == "linux/amd64", doc

    # a no-op: 2 bucket requests, nothing written (the page is current)
    before = objects(seaweed)
    code, noop = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and noop["bucket_requests"] == 2 and objects(seaweed) == before

    # a tag more in each repository: new data files, named by the page; the old ones gone
    config = layout_config(tmp_path, f"s3://{seaweed.bucket}/mirror", ["a", "b"], ["v1", "v2"])
    assert main(["lock", "-c", str(config)]) == 0
    assert main(["sync", "-c", str(config)]) == 0
    second = data_files(seaweed)
    assert len(second) == 2 and named_by_page(seaweed) == second and len(second & first) == 0

    # the state object lost: the configs are read again once, the page is not rewritten
    page_etag = objects(seaweed)[PREFIX + "index.html"][1]
    s3.delete_object(Bucket=seaweed.bucket, Key=PREFIX + STATE_REL)
    written: list[BrowseWrites] = []
    original = BucketStore.write_browse

    def recorded(self: BucketStore, writes: BrowseWrites) -> None:
        written.append(writes)
        original(self, writes)

    monkeypatch.setattr(BucketStore, "write_browse", recorded)
    code, relearn = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and relearn["bucket_requests"] > 2, relearn
    assert [w.pending for w in written] == [False]  # the page and its data were current
    assert objects(seaweed)[PREFIX + "index.html"][1] == page_etag
    assert data_files(seaweed) == second
    code, noop = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and noop["bucket_requests"] == 2, noop

    # a page changed behind registrish's back is written again
    s3.put_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html", Body=b"<p>hi</p>")
    assert main(["sync", "-c", str(config)]) == 0
    assert objects(seaweed)[PREFIX + "index.html"][1] == page_etag


def test_verify_hashes_blobs_in_parallel_and_repairs_each_damaged_one(
    seaweed: SeaweedS3,
    seaweed_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_random_image(tmp_path / "layout", "v1", [5000, 6000, 7000], seed=13)
    config = layout_config(tmp_path, f"s3://{seaweed.bucket}/mirror", ["a"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    assert main(["sync", "-c", str(config)]) == 0
    s3 = client()
    blobs = sorted(k for k in objects(seaweed) if "/blobs/" in k)
    assert len(blobs) == 4  # three layers and the config
    good = {k: s3.get_object(Bucket=seaweed.bucket, Key=k)["Body"].read() for k in blobs}
    damaged = [k for k in blobs if len(good[k]) > 4000][:2]
    for key in damaged:  # same size, other bytes: only re-hashing can tell
        s3.put_object(Bucket=seaweed.bucket, Key=key, Body=bytes(reversed(good[key])))

    # the first two blobs are hashed at the same time, or this barrier breaks (timeout)
    both = threading.Barrier(2, timeout=60)
    calls: list[str] = []
    original = BucketStore._blob_is_bad

    def together(self: BucketStore, rel: str) -> bool:
        calls.append(rel)
        if len(calls) <= 2:
            both.wait()
        return original(self, rel)

    monkeypatch.setattr(BucketStore, "_blob_is_bad", together)
    code, verified = run_json(capsys, "sync", "-c", str(config), "--verify", "-j", "4")
    assert code == 0 and not both.broken, verified
    assert sorted(calls) == sorted(k.removeprefix(PREFIX) for k in blobs)
    assert verified["summary"]["fetched_blobs"] == len(damaged)
    for key in blobs:
        assert s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read() == good[key]
