"""The route table: URL classification, headers per kind, and the entries of a tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.trees import build_tree

from registrish_lock.oci import mediatypes
from registrish_lock.serving.routes import (
    IMMUTABLE,
    ErrorCode,
    Kind,
    Miss,
    Policy,
    Target,
    classify,
    entries,
    error_body,
    headers_for,
    read_objects,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/", Target(Kind.PING)),
        ("/v2", Target(Kind.PING)),
        ("/v2/_catalog", Target(Kind.CATALOG)),
        ("/v2/team/app/tags/list", Target(Kind.TAGS_LIST, "team/app")),
        ("/v2/a/manifests/v1.0", Target(Kind.MANIFEST_TAG, "a", "v1.0")),
        (f"/v2/a/manifests/{D}", Target(Kind.MANIFEST_DIGEST, "a", D)),
        (f"/v2/a/b/blobs/{D}", Target(Kind.BLOB, "a/b", D)),
        (f"/v2/a/referrers/{D}", Target(Kind.REFERRERS, "a", D)),
        ("/v2/a/manifests/v1.~oci-index", Miss(404, ErrorCode.MANIFEST_UNKNOWN)),
        ("/v2/a/manifests/sha256:baddigeststring", Miss(404, ErrorCode.MANIFEST_UNKNOWN)),
        ("/v2/a/blobs/sha256:bad", Miss(404, ErrorCode.BLOB_UNKNOWN)),
        ("/v2/a/referrers/sha256:bad", Miss(400, ErrorCode.DIGEST_INVALID)),
        ("/.registrish/blobs/sha256/ab", Miss(404, ErrorCode.NAME_UNKNOWN)),
        ("/v2/.registrish/manifests/v1", Miss(404, ErrorCode.NAME_UNKNOWN)),
        ("/v2/../etc/manifests/v1", Miss(404, ErrorCode.NAME_UNKNOWN)),
        ("/v2/UPPER/manifests/v1", Miss(404, ErrorCode.NAME_UNKNOWN)),
        ("/v2/_referrers-empty", Miss(404, ErrorCode.NAME_UNKNOWN)),
        ("/_headers", Miss(404, ErrorCode.NAME_UNKNOWN)),
    ],
)
def test_classify(path: str, expected: Target | Miss) -> None:
    assert classify(path) == expected


def test_manifest_headers_by_tag_and_digest() -> None:
    policy = Policy(tag_cache_seconds=30)
    by_tag = dict(
        headers_for(Kind.MANIFEST_TAG, policy=policy, media_type=mediatypes.OCI_INDEX, digest=D)
    )
    assert by_tag == {
        "Content-Type": mediatypes.OCI_INDEX,
        "Docker-Content-Digest": D,
        "Cache-Control": "public, max-age=30",
        "Docker-Distribution-API-Version": "registry/2.0",
    }
    by_digest = dict(
        headers_for(Kind.MANIFEST_DIGEST, policy=policy, media_type=mediatypes.OCI_MANIFEST)
    )
    assert by_digest["Cache-Control"] == IMMUTABLE
    assert "Docker-Content-Digest" not in by_digest
    with pytest.raises(ValueError, match="not a manifest media type"):
        headers_for(Kind.MANIFEST_TAG, policy=policy, media_type="text/plain")


def test_zero_cache_seconds_means_no_cache() -> None:
    headers = dict(headers_for(Kind.TAGS_LIST, policy=Policy(tag_cache_seconds=0)))
    assert headers["Cache-Control"] == "no-cache"


def test_error_body_is_oci_error_json() -> None:
    doc = json.loads(error_body(ErrorCode.BLOB_UNKNOWN, "sha256:x"))
    assert doc["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert doc["errors"][0]["detail"] == "sha256:x"


def test_entries_cover_every_locked_object(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    objects = read_objects(tree.layout, tree.lock)
    listed = {e.path: e for e in entries(objects, Policy())}
    for key, (digest, media_type) in tree.refs.items():
        name, tag = key.split(":")
        by_tag = listed[f"v2/{name}/manifests/{tag}"]
        assert (by_tag.kind, by_tag.content_type, by_tag.digest) == (
            Kind.MANIFEST_TAG,
            media_type,
            digest,
        )
        by_digest = listed[f"v2/{name}/manifests/{digest}"]
        assert by_digest.cache_control == IMMUTABLE
        assert listed[f"v2/{name}/referrers/{digest}"].content_type == mediatypes.OCI_INDEX
    blob_name, blob_digest, blob_data = tree.blob
    blob = listed[f"v2/{blob_name}/blobs/{blob_digest}"]
    assert (blob.kind, blob.size, blob.digest) == (Kind.BLOB, len(blob_data), blob_digest)
    # Platform children of both index kinds are listed by digest, with their blobs.
    multi = next(t for t in tree.lock.tags if t.name == "multi")
    for child in multi.platforms:
        assert listed[f"v2/multi/manifests/{child.digest}"].content_type == child.media_type
    assert sum(1 for e in listed.values() if e.path.startswith("v2/multi/blobs/")) == 4
    # Every file path in the entries exists in the tree.
    for entry in listed.values():
        assert tree.layout.path(entry.path).is_file(), entry.path
