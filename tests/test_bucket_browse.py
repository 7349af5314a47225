"""The browse page of a bucket tree (pure): the same bytes a local tree's page has, from the
few config fields the state object keeps, and the diff against a listing that decides what
a sync uploads or deletes (a no-op uploads nothing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from support.fake_upstream import FakeUpstream, build_image, build_index, lock_of, locked

from registrish_lock.bucket.browse import (
    browse_writes,
    config_facts,
    render,
    wanted_configs,
)
from registrish_lock.bucket.client import RemoteObject
from registrish_lock.lock.lockfile import LockedTag
from registrish_lock.serving.browse import read_model
from registrish_lock.serving.browse_page import render_site
from registrish_lock.serving.routes import BROWSE_REL
from registrish_lock.tree.layout import Layout


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _tree(tmp: Path) -> tuple[Layout, FakeUpstream, list[LockedTag]]:
    """A local tree of a single image, an index, and a tag naming one of the index's
    children directly (so its manifest is read for the index first), plus an image whose
    config has a variant and one whose config is no JSON object."""
    up = FakeUpstream()
    arm = build_image(up, "multi", None, seed="arm", platform="linux/arm64")
    amd = build_image(up, "multi", None, seed="amd")
    index = build_index(up, "multi", "v1", [amd, arm])
    app = build_image(up, "app", "v1", seed="app", docker=True)
    tags = [
        locked("app", "v1", app),
        locked("multi", "v1", index),
        locked("multi", "w-amd", amd),  # a child of multi:v1, read after it
    ]
    layout = Layout(tmp / "public")
    for t in tags:
        for digest, data in up.manifests.items():
            path = layout.path(Layout.rel_manifest(t.name, digest))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for digest, data in up.blobs.items():
            path = layout.path(Layout.rel_blob(t.name, digest))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return layout, up, tags


def test_the_page_from_config_facts_is_the_local_page(tmp_path: Path) -> None:
    layout, up, tags = _tree(tmp_path)
    lock = lock_of(*tags)
    local = render_site(read_model(layout, lock))
    wanted = wanted_configs(lock, up.manifests)
    assert len(wanted) == 2  # app's and amd's config (multi:v1 is an index)
    facts = {d: config_facts(up.blobs[d]) for d in wanted}
    site = render(lock, up.manifests, facts)
    assert site == local
    # every single-image tag knows its platform, the index's child included
    assert b'"linux/amd64"' in b"".join(site.data.values())
    page = json.loads(b"".join(v for v in site.data.values() if b'"multi"' in v))
    w_amd = next(row for row in page["tags"] if row[0] == "w-amd")
    assert w_amd[6][0][0] == "linux/amd64", w_amd


def test_config_facts_keep_only_what_the_page_reads() -> None:
    config = {"architecture": "arm", "os": "linux", "variant": "v7", "rootfs": {"x": 1}}
    assert json.loads(config_facts(json.dumps(config).encode())) == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }
    assert config_facts(b"[1, 2]") == "{}" and config_facts(b"\xff not json") == "{}"


def test_a_listing_holding_the_page_means_nothing_to_write(tmp_path: Path) -> None:
    _layout, up, tags = _tree(tmp_path)
    lock = lock_of(*tags)
    site = render(lock, up.manifests, {})
    assert len(site.data) == 2
    cold = browse_writes(site, {})
    assert cold.pending and cold.data == site.data and cold.page == site.page
    assert cold.stale == ()

    listed = {rel: RemoteObject(rel, len(body), md5(body)) for rel, body in site.data.items()}
    listed[BROWSE_REL] = RemoteObject(BROWSE_REL, len(site.page), md5(site.page))
    assert not browse_writes(site, listed).pending

    # an old data file goes (after the page), a foreign key under browse/ stays; a page
    # with other bytes and a truncated data file are written again
    old = "browse/" + "0" * 64 + ".json"
    first = sorted(site.data)[0]
    changed = {
        **listed,
        old: RemoteObject(old, 10, "x"),
        "browse/notes.txt": RemoteObject("browse/notes.txt", 1, "y"),
        BROWSE_REL: RemoteObject(BROWSE_REL, len(site.page), "another-etag"),
        first: RemoteObject(first, 3, "z"),
    }
    writes = browse_writes(site, changed)
    assert writes.stale == (old,)
    assert writes.page == site.page and set(writes.data) == {first}
