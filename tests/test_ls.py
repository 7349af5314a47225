"""`registrish ls` and the one tag order it shares with the browse page: versions newest
first, then the other tags by name. Unit tests of the order and the listing, and the real
command on a tree synced from the test bed's docker-registry (no request during `ls`)."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import write_config
from support.trees import build_tree
from testbed.images import push_random_image
from testbed.registrish import registrish
from testbed.upstream import CountingProxy, Registry

from registrish_lock.lock.lockfile import LockedTag, make_lock
from registrish_lock.lock.selectors import newest_first
from registrish_lock.oci import mediatypes
from registrish_lock.serving.browse import model_from
from registrish_lock.serving.browse_page import render_site
from registrish_lock.serving.listing import list_tree, listing_json, listing_lines

MIXED = ["latest", "1.0.2", "1.0.10", "v2", "2.0rc1", "edge", "1.0", "v1.0", "1.0.9"]
ORDERED = ["v2", "2.0rc1", "1.0.10", "1.0.9", "1.0.2", "1.0", "v1.0", "edge", "latest"]


def test_newest_first_orders_versions_then_names() -> None:
    assert newest_first(MIXED, str) == ORDERED
    assert newest_first(reversed(MIXED), str) == ORDERED  # the input order does not matter
    assert newest_first([], str) == []


def test_browse_page_lists_1_0_10_before_1_0_2() -> None:
    digest = "sha256:" + "ab" * 32
    tags = [
        LockedTag("app", tag, "up.test/app", digest, mediatypes.OCI_MANIFEST, 10, 10)
        for tag in MIXED
    ]
    model = model_from(make_lock("h", tags), {}, {})
    ((_, facts),) = model.repositories
    assert [f.tag for f in facts] == ORDERED
    (data,) = render_site(model).data.values()  # the page's rows come from its data file
    assert [row[0] for row in json.loads(data)["tags"]] == ORDERED


def test_listing_of_a_built_tree(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "tree")
    listing = list_tree(tree.layout, tree.lock)
    assert [name for name, _ in listing] == sorted({t.name for t in tree.lock.tags})
    by_name = dict(listing)
    assert [row.facts.tag for row in by_name["app-oci"]] == ["v2", "v1", "latest"]
    (multi,) = by_name["multi"]
    assert multi.served and multi.platforms() == ["linux/amd64", "linux/arm64"]
    assert (multi.facts.digest, multi.facts.media_type) == tree.refs["multi:v1"]
    lines = listing_lines(listing)
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "SOURCE"]
    assert len(lines) == 1 + len(tree.lock.tags)
    assert all("not synced" not in line for line in lines)
    # The tag file now holds another manifest: the tree no longer serves the locked digest.
    twin = next((tree.layout.root / "v2/app-docker/manifests").glob("v1.~*"))
    twin.unlink()
    twin.write_bytes(b"{}")
    (docker,) = dict(list_tree(tree.layout, tree.lock, ["app-docker"]))["app-docker"]
    assert not docker.served
    doc = listing_json(list_tree(tree.layout, tree.lock, ["app-docker"]))
    assert [r["name"] for r in doc["repositories"]] == ["app-docker"]
    assert doc["repositories"][0]["tags"][0]["served"] is False


def test_ls_on_a_synced_tree(
    upstream_registry: Registry, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    pushed = {
        tag: push_random_image(
            upstream_registry, "ls/app", tag, (2048,), seed=i, workdir=tmp_path / "w"
        )
        for i, tag in enumerate(["1.0.2", "1.0.10", "latest"])
    }
    config = write_config(tmp_path, counting_proxy.host, [("ls/app", "app", "1.0.2")])
    text = config.read_text().replace('tags = ["1.0.2"]', 'tags = ["1.0.2", "latest", "1.0.10"]')
    config.write_text(text)
    registrish(config, "lock")

    before = registrish(config, "ls")
    assert before.stdout.count("(not synced)") == 3, before.stdout
    assert "3 not synced: run `registrish sync`" in before.stderr

    registrish(config, "sync")
    requests = len(counting_proxy.requests)
    listed = registrish(config, "ls")
    doc = json.loads(registrish(config, "ls", "--json").stdout)
    assert len(counting_proxy.requests) == requests  # the tree and the lock alone

    lines = listed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["REPOSITORY", "TAG"],
        ["app", "1.0.10"],
        ["app", "1.0.2"],
        ["app", "latest"],
    ]
    assert "not synced" not in listed.stdout
    assert listed.stderr.strip() == "1 repository, 3 tags"
    ((repo,),) = [doc["repositories"]]
    assert repo["name"] == "app"
    assert [t["tag"] for t in repo["tags"]] == ["1.0.10", "1.0.2", "latest"]
    for entry in repo["tags"]:
        ref = pushed[entry["tag"]]
        assert entry["digest"] == ref.digest and entry["served"] is True
        assert entry["source"] == f"{counting_proxy.host}/ls/app"
        assert [p["platform"] for p in entry["platforms"]] == ["linux/amd64"]
        assert entry["size"] > 2048
        assert entry["digest"][:19] in listed.stdout

    only = registrish(config, "ls", "nope", check=False)
    assert only.returncode == 2 and "Traceback" not in only.stderr
    assert only.stderr.splitlines()[0] == (
        f"error: {tmp_path / 'registrish.lock'}: no repository nope in the lock"
    )
