"""The bucket tree's listings on a real S3 server (the test bed's SeaweedFS): the lighter
parse of ListObjectsV2 (`bucket.listxml`) gives every key, size and ETag botocore's own
parse gives, page after page, keys needing XML escaping and URL-decoding included; errors
still come from botocore's parse. A no-op sync of a tree whose keys span three pages of
the listing sends 1 GET + 3 LISTs and still sees an object deleted on the last page."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.buckets import run_json, s3_client, synced_mirror
from testbed.images import SeededUpstream
from testbed.s3 import SeaweedS3, aws_environment

from registrish_lock.bucket import listxml
from registrish_lock.bucket.client import PublishError
from registrish_lock.bucket.session import open_bucket
from registrish_lock.bucket.target import S3Target

pytestmark = pytest.mark.slow

#: keys a listing must escape (&, <, ") or URL-encode (space, %, +, unicode), around a page
TRICKY = ["a b", "a&b", "a<b>", 'q"q', "p%41", "plus+sign", "ünï/cødé", "v2/x:y", "z~"]


def listed(client: Any, bucket: str, prefix: str, page: int) -> list[tuple[str, int, str]]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page}
    )
    return [(o["Key"], o["Size"], o["ETag"]) for p in pages for o in p.get("Contents", [])]


def test_the_lighter_parse_lists_what_botocore_lists(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    aws_environment(monkeypatch, tmp_path, seaweed)
    plain = s3_client(seaweed)
    store = open_bucket(S3Target(seaweed.bucket, "t"), jobs=2)
    keys = [f"t/{k}" for k in TRICKY] + [f"t/n{i:02d}" for i in range(20)]
    # no empty body: SeaweedFS stalls the request after an empty PUT for a minute
    for i, key in enumerate([*keys, "u/outside"], start=1):
        plain.put_object(Bucket=seaweed.bucket, Key=key, Body=b"x" * i)
    sent: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda **_: sent.append("x"))
    for page in (4, 7, 1000):
        sent.clear()
        light = listed(store.client, seaweed.bucket, "t/", page)
        assert light == listed(plain, seaweed.bucket, "t/", page)
        assert sorted(k for k, _, _ in light) == sorted(keys)
        assert len(sent) == -(-len(keys) // page)  # one request per page, none more
    sizes = {o.key: o.size for o in store.list_objects("t/")}
    assert sizes == {k: i for i, k in enumerate(keys, start=1)}
    assert listed(store.client, seaweed.bucket, "nothing/", 5) == []
    with pytest.raises(PublishError, match="NoSuchBucket"):  # botocore's parse of the error
        list(open_bucket(S3Target("no-such-bucket"), jobs=1).list_objects(""))


def test_a_body_it_cannot_read_is_left_to_botocore() -> None:
    odd = b"<ListBucketResult><Contents><Key>k</Key><Size>many</Size></Contents></ListBucketResult>"
    for body in (odd, b"not xml", b"<Error><Code>SlowDown</Code></Error>"):
        response = {"status_code": 200, "body": body}
        custom: dict[str, Any] = {}
        listxml.parse_contents(response, custom)
        assert response["body"] == body and custom == {}
    body = b"<ListBucketResult><Contents/></ListBucketResult>"
    error: dict[str, Any] = {"status_code": 503, "body": body}
    listxml.parse_contents(error, {})
    assert error["body"] is body


def test_a_noop_over_three_pages_counts_its_requests_and_sees_the_last_page(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    seaweed: SeaweedS3,
    seeded_upstream: SeededUpstream,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws_environment(monkeypatch, tmp_path, seaweed)
    config = synced_mirror(tmp_path, f"s3://{seaweed.bucket}/mirror", seeded_upstream.host)
    plain = s3_client(seaweed)
    # 2,100 objects sorting before the tree's (not registry paths: the tree ignores them)
    # push its keys onto the listing's third page
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(
                lambda i: plain.put_object(
                    Bucket=seaweed.bucket, Key=f"mirror/a/{i:04d}", Body=b"x"
                ),
                range(2100),
            )
        )
    code, noop = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and not noop["plan"]["pending"], noop
    assert noop["bucket_requests"] == 1 + 3, noop["bucket_requests"]  # state GET + 3 pages
    assert noop["summary"]["upstream_requests"] == 0
    tree = [k for k, _, _ in listed(plain, seaweed.bucket, "mirror/v2/", 1000)]
    victim = max(k for k in tree if "/blobs/" in k)  # the listing's very last blob
    plain.delete_object(Bucket=seaweed.bucket, Key=victim)
    code, dry = run_json(capsys, "sync", "-c", str(config), "--dry-run")
    assert code == 1 and dry["plan"]["pending"], dry
    assert victim.rsplit("/", 1)[1] in {f["digest"] for f in dry["plan"]["fetch"]}, dry
    code, fixed = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and fixed["plan"]["pending"], fixed
    assert plain.head_object(Bucket=seaweed.bucket, Key=victim)["ContentLength"] > 0
    code, again = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and not again["plan"]["pending"] and again["bucket_requests"] == 4, again
