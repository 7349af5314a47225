"""Resolution rules: selectors, pins kept unless asked, request budgets, determinism."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from support.memory_upstream import MemoryUpstream, image_manifest

from registrish_lock.console import Console
from registrish_lock.errors import ConfigError, LockfileError, NotFoundError, UpstreamError
from registrish_lock.lock.config import load_config
from registrish_lock.lock.lockfile import dumps, loads, read_lock, write_lock
from registrish_lock.lock.resolve import resolve
from registrish_lock.lock.selectors import select_from_listing, tag_version
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import Platform, sha256_digest

CONFIG = """
[[image]]
source = "127.0.0.1:5000/base"
tags = ["latest"]
versions = ">=3.18,<4"
latest = 2

[[image]]
source = "127.0.0.1:5000/multi"
tags = ["v1"]
platforms = ["linux/arm64"]
"""


@pytest.fixture
def upstream() -> MemoryUpstream:
    up = MemoryUpstream()
    for tag in ("3.17", "3.18", "3.19", "3.20", "v3.21", "4.0", "latest", "edge", "3.22rc1"):
        up.put("base", tag, image_manifest(f"base-{tag}"))
    up.put_index("multi", "v1", {"linux/amd64": "m-amd64", "linux/arm64": "m-arm64"})
    return up


def config_at(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "registrish.toml"
    path.write_text(text)
    return path


def test_tag_version_tolerates_v_prefix() -> None:
    assert str(tag_version("v3.21")) == "3.21"
    assert tag_version("latest") is None
    assert tag_version("3.21-alpine") is None


def test_selection_picks_the_newest_in_range(tmp_path: Path) -> None:
    image = load_config(config_at(tmp_path)).images[0]
    listing = ["3.17", "3.18", "3.19", "3.20", "v3.21", "4.0", "latest", "3.22rc1"]
    assert select_from_listing(image, listing) == ["3.20", "v3.21"]


def test_resolve_records_platforms_and_sizes(tmp_path: Path, upstream: MemoryUpstream) -> None:
    config = load_config(config_at(tmp_path))
    result = resolve(config, None, upstream)
    keys = [t.key for t in result.lock.tags]
    assert keys == [
        ("base", "3.20"),
        ("base", "latest"),
        ("base", "v3.21"),
        ("multi", "v1"),
    ]
    multi = result.lock.by_key()[("multi", "v1")]
    assert [p.platform for p in multi.platforms] == ["linux/arm64"]
    assert multi.digest == upstream.tags[("multi", "v1")]  # the upstream index digest, as is
    # index + one child manifest + its config (10) and two layers (100 + 200)
    child_size = len(upstream.manifests[multi.platforms[0].digest])
    assert multi.total_size == multi.size + child_size + 10 + 100 + 200
    assert {c.kind for c in result.changes} == {"added"}


def test_second_lock_makes_no_request_and_is_byte_identical(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    config = load_config(config_at(tmp_path))
    first = resolve(config, None, upstream).lock
    assert write_lock(config.lock_path, first)
    before = config.lock_path.read_bytes()
    upstream.calls.clear()
    second = resolve(config, read_lock(config.lock_path), upstream)
    assert upstream.request_count == 0
    assert second.changes == []
    assert not write_lock(config.lock_path, second.lock)
    assert config.lock_path.read_bytes() == before


def test_upgrade_with_nothing_moved_is_one_head_per_tag(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    config = load_config(config_at(tmp_path))
    lock = resolve(config, None, upstream).lock
    upstream.calls.clear()
    again = resolve(config, lock, upstream, upgrade=set())
    assert upstream.calls == {"head": len(lock.tags), "list": 1}  # one listing: 'base' selects
    assert dumps(again.lock) == dumps(lock)


def test_pins_hold_until_upgraded(tmp_path: Path, upstream: MemoryUpstream) -> None:
    config = load_config(config_at(tmp_path))
    lock = resolve(config, None, upstream).lock
    old = lock.by_key()[("base", "latest")].digest
    moved = upstream.put("base", "latest", image_manifest("base-latest-2"))
    assert resolve(config, lock, upstream).lock.by_key()[("base", "latest")].digest == old
    only_multi = resolve(config, lock, upstream, upgrade={"multi"})
    assert only_multi.lock.by_key()[("base", "latest")].digest == old
    upgraded = resolve(config, lock, upstream, upgrade={"base"})
    assert upgraded.lock.by_key()[("base", "latest")].digest == moved
    assert [(c.tag, c.kind) for c in upgraded.changes] == [("latest", "moved")]


def test_changed_platforms_keep_the_pin_but_reselect(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    lock = resolve(load_config(config_at(tmp_path)), None, upstream).lock
    pinned = lock.by_key()[("multi", "v1")].digest
    upstream.put_index("multi", "v1", {"linux/amd64": "new-a", "linux/arm64": "new-b"})
    text = CONFIG.replace(
        'platforms = ["linux/arm64"]', 'platforms = ["linux/amd64", "linux/arm64"]'
    )
    config = load_config(config_at(tmp_path, text))
    result = resolve(config, lock, upstream)
    entry = result.lock.by_key()[("multi", "v1")]
    assert entry.digest == pinned  # not moved: nobody asked for --upgrade
    assert [p.platform for p in entry.platforms] == ["linux/amd64", "linux/arm64"]
    assert [c.kind for c in result.changes] == ["reselected"]


def test_missing_platform_is_a_clear_error(tmp_path: Path, upstream: MemoryUpstream) -> None:
    config = load_config(config_at(tmp_path, CONFIG.replace("linux/arm64", "linux/s390x")))
    with pytest.raises(NotFoundError, match="none of the platforms linux/s390x"):
        resolve(config, None, upstream)


@pytest.mark.parametrize(
    ("child", "wanted", "expected"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm64", "linux/aarch64", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/arm", "linux/arm/v6", False),
        ("linux/arm/v6", "linux/arm", True),
        ("linux/amd64", "linux/amd64/v1", True),
        ("linux/amd64/v3", "linux/amd64", True),
        ("linux/amd64", "linux/amd64/v3", False),
        ("linux/amd64", "linux/arm64", False),
        ("windows/amd64", "linux/amd64", False),
    ],
)
def test_platforms_match_as_containerd_normalises_them(
    child: str, wanted: str, expected: bool
) -> None:
    assert Platform.parse(child).matches(Platform.parse(wanted)) is expected


def test_a_listed_tag_that_a_repository_would_sit_under_is_refused(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    upstream.put("base", "manifests", image_manifest("odd"))
    text = (
        '[[image]]\nsource = "127.0.0.1:5000/base"\nmatch = "^man"\n\n'
        '[[image]]\nsource = "127.0.0.1:5000/multi"\nname = "base/manifests/manifests"\n'
        'tags = ["v1"]\n'
    )
    config = load_config(config_at(tmp_path, text))  # no collision among exact tags
    with pytest.raises(ConfigError, match=r"image\[1\]\.name: repository 'base/manifests/"):
        resolve(config, None, upstream)


SCHEMA1 = json.dumps({"schemaVersion": 1, "name": "base", "tag": "old", "fsLayers": []}).encode()
SCHEMA1_TYPE = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def test_a_manifest_without_media_type_served_as_json_is_an_oci_manifest(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    doc = json.loads(image_manifest("plain"))
    del doc["mediaType"]
    digest = upstream.put("base", "plain", json.dumps(doc).encode(), "application/json")
    text = '[[image]]\nsource = "127.0.0.1:5000/base"\ntags = ["plain"]\n'
    (entry,) = resolve(load_config(config_at(tmp_path, text)), None, upstream).lock.tags
    assert (entry.digest, entry.media_type) == (digest, mediatypes.OCI_MANIFEST)


def test_schema1_is_an_upstream_error_that_says_so(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    upstream.put("base", "old", SCHEMA1, SCHEMA1_TYPE)
    text = '[[image]]\nsource = "127.0.0.1:5000/base"\ntags = ["old"]\n'
    with pytest.raises(UpstreamError, match="Docker schema 1 manifest") as info:
        resolve(load_config(config_at(tmp_path, text)), None, upstream)
    assert info.value.exit_code == 3


def _index_with_schema1_child(upstream: MemoryUpstream, *, with_image: bool) -> None:
    upstream.manifests[sha256_digest(SCHEMA1)] = SCHEMA1
    upstream.content_types[sha256_digest(SCHEMA1)] = SCHEMA1_TYPE
    image = image_manifest("amd64")
    upstream.manifests[sha256_digest(image)] = image
    children = [
        {"mediaType": SCHEMA1_TYPE, "digest": sha256_digest(SCHEMA1), "size": len(SCHEMA1)},
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": sha256_digest(image), "size": len(image)},
    ]
    for child, arch in zip(children, ("386", "amd64"), strict=True):
        child["platform"] = {"os": "linux", "architecture": arch}
    doc = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX}
    doc["manifests"] = children if with_image else children[:1]
    upstream.put("base", "mixed", json.dumps(doc).encode())


def test_an_index_of_only_unmirrorable_children_is_refused(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    _index_with_schema1_child(upstream, with_image=False)
    text = '[[image]]\nsource = "127.0.0.1:5000/base"\ntags = ["mixed"]\n'
    with pytest.raises(UpstreamError, match="no child of the index is a manifest registrish"):
        resolve(load_config(config_at(tmp_path, text)), None, upstream)


def test_unmirrorable_children_left_out_with_a_warning(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    _index_with_schema1_child(upstream, with_image=True)
    text = '[[image]]\nsource = "127.0.0.1:5000/base"\ntags = ["mixed"]\n'
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err)
    result = resolve(load_config(config_at(tmp_path, text)), None, upstream, console=console)
    (entry,) = result.lock.tags
    assert [p.platform for p in entry.platforms] == ["linux/amd64"]
    assert f"left out index children of type {SCHEMA1_TYPE}" in err.getvalue()


def test_removed_image_drops_its_tags(tmp_path: Path, upstream: MemoryUpstream) -> None:
    lock = resolve(load_config(config_at(tmp_path)), None, upstream).lock
    only_base = CONFIG.split('[[image]]\nsource = "127.0.0.1:5000/multi"')[0]
    result = resolve(load_config(config_at(tmp_path, only_base)), lock, upstream)
    assert [(c.name, c.kind) for c in result.changes] == [("multi", "removed")]


def test_lock_round_trip_and_header(tmp_path: Path, upstream: MemoryUpstream) -> None:
    lock = resolve(load_config(config_at(tmp_path)), None, upstream).lock
    text = dumps(lock)
    assert text.startswith("# This file is generated by `registrish lock`")
    assert loads(text, tmp_path / "x.lock") == lock
    assert dumps(loads(text, tmp_path / "x.lock")) == text


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace("version = 1", "version = 99"), "version: format version 99"),
        (lambda t: t.replace('digest = "sha256:', 'digest = "sha256:zz', 1), "tag[0].digest"),
        (lambda t: t.replace('name = "base"', 'name = "../x"', 1), "tag[0].name"),
        (lambda t: t.replace('tag = "3.20"', 'tag = ".x"', 1), "tag[0].tag"),
        (lambda t: t.replace("total-size = ", "total-size = -", 1), "total-size"),
        (lambda t: t.replace("[[tag]]", "[[tag", 1), "invalid TOML"),
        (
            lambda t: t.replace(
                'media-type = "application/vnd.oci.image.manifest.v1+json"',
                'media-type = "text/html"',
                1,
            ),
            "media-type",
        ),
    ],
)
def test_bad_lock_is_one_clear_error(
    tmp_path: Path, upstream: MemoryUpstream, edit: object, needle: str
) -> None:
    lock = resolve(load_config(config_at(tmp_path)), None, upstream).lock
    assert callable(edit)
    path = tmp_path / "registrish.lock"
    path.write_text(edit(dumps(lock)))
    with pytest.raises(LockfileError) as info:
        read_lock(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
