"""The bucket tree's observed state (pure): a listing cross-checked against the state
object, whose entries count only while the listing shows the same ETag."""

from __future__ import annotations

import hashlib

from registrish_lock.bucket.client import RemoteObject
from registrish_lock.bucket.state import (
    BrowseRecord,
    Entry,
    Recorded,
    decode,
    encode,
    observe,
    read_state,
)
from registrish_lock.oci import mediatypes
from registrish_lock.tree.layout import Layout

DIGEST = "sha256:" + "a" * 64
MANIFEST = b'{"schemaVersion":2}'
TAG = Layout.rel_manifest("app", "v1")
LIST = Layout.rel_tags_list("app")
LAST = Layout.rel_tags_last("app", "v0")
BLOB = Layout.rel_blob("app", DIGEST)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def listing(**extra: RemoteObject) -> dict[str, RemoteObject]:
    objs = [
        RemoteObject(TAG, len(MANIFEST), md5(MANIFEST)),
        RemoteObject(LIST, 5, md5(b"tags\n")),
        RemoteObject(BLOB, 10, "multipart-2"),
        RemoteObject("v2/index", 3, md5(b"{}\n")),
        RemoteObject("v2/", 0, "dir"),
    ]
    return {o.key: o for o in objs} | extra


def recorded() -> dict[str, Entry]:
    return {
        TAG: Entry(md5(MANIFEST), len(MANIFEST), MANIFEST, mediatypes.OCI_MANIFEST),
        LIST: Entry(md5(b"tags\n"), 5, b"tags\n"),
        "v2/index": Entry(md5(b"{}\n"), 3, b"{}\n"),
        LAST: Entry(None, 4, b"page"),
    }


def test_state_round_trips_and_ignores_damage() -> None:
    entries = recorded() | {"v2/x/tags/list": Entry("e", 2, b"\xff\xfe")}
    assert decode(encode(entries)) == entries
    assert encode(entries) == encode(dict(reversed(entries.items())))  # deterministic
    assert decode(b"not gzip") == {} and decode(None) == {}
    # the browse page's config facts ride along; a state without them reads as none
    configs = {DIGEST: '{"architecture":"amd64","os":"linux"}'}
    assert read_state(encode(entries, configs)) == Recorded(entries, configs, None)
    assert read_state(encode(entries)) == Recorded(entries, {}, None)
    # and the browse page's record: its inputs' fingerprint, its objects' ETags and sizes
    page = BrowseRecord("f" * 64, {"index.html": (md5(b"<p>"), 3), "browse/x.json": ("e", 2)})
    assert read_state(encode(entries, configs, page)) == Recorded(entries, configs, page)


def test_a_malformed_browse_record_reads_as_none() -> None:
    """A record that is not what `encode` writes renders the page again (never trusted)."""
    import gzip
    import json

    doc = json.loads(gzip.decompress(encode(recorded(), {}, BrowseRecord("f", {"a": ("e", 1)}))))
    bad: object
    for bad in ({"inputs": 1}, {"inputs": "f", "objects": {"a": ["e"]}}, {"inputs": "f"}, []):
        data = gzip.compress(json.dumps({**doc, "browse": bad}).encode())
        assert read_state(data) == Recorded(recorded(), {}, None)


def test_a_vouched_for_listing_needs_no_read() -> None:
    def read(rel: str) -> tuple[bytes, str | None]:
        raise AssertionError(f"read {rel}")

    seen = observe(listing(), recorded(), read)
    state = seen.state
    digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert state.manifest_digests[TAG] == digest
    # the typed twin is virtual: reported present so the planner does not rewrite it
    assert state.manifest_digests[Layout.rel_manifest_twin("app", "v1", mediatypes.OCI_MANIFEST)]
    assert state.manifest_bytes[digest] == MANIFEST
    assert state.docs[LIST] == b"tags\n" and state.docs[LAST] == b"page"
    assert LAST in state.files and BLOB in state.files and "v2/" not in state.files
    assert state.store[DIGEST].size == 10 and seen.blob_keys[DIGEST] == BLOB
    assert seen.reread == 0 and set(seen.entries) == set(recorded())


def test_an_object_changed_behind_the_state_is_read_again() -> None:
    reads: list[str] = []
    other = b'{"schemaVersion":2,"x":1}'

    def read(rel: str) -> tuple[bytes, str | None]:
        reads.append(rel)
        return other, mediatypes.DOCKER_MANIFEST

    changed = listing(**{TAG: RemoteObject(TAG, len(other), md5(other))})
    seen = observe(changed, recorded(), read)
    assert reads == [TAG] and seen.reread == 1
    assert seen.state.manifest_digests[TAG] == "sha256:" + hashlib.sha256(other).hexdigest()
    twin = Layout.rel_manifest_twin("app", "v1", mediatypes.DOCKER_MANIFEST)
    assert twin in seen.state.manifest_digests


def test_a_ping_without_its_v2_key_is_not_trusted() -> None:
    without = listing()
    del without["v2/"]
    seen = observe(without, recorded(), lambda rel: (b"", None))
    assert "v2/index" not in seen.state.docs  # the planner writes the ping again
