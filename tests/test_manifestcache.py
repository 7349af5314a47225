"""`lock` fetches each manifest digest at most once per run, and not at all when the tree
holds its verified bytes. (Against the real token-auth upstream: test_hub_e2e.py.)"""

from __future__ import annotations

import threading
from pathlib import Path

import tomli_w
from support.memory_upstream import MemoryUpstream, image_manifest

from registrish_lock.lock.config import load_config
from registrish_lock.lock.resolve import resolve
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import sha256_digest
from registrish_lock.oci.reference import Reference
from registrish_lock.tree.layout import Layout
from registrish_lock.upstream.manifestcache import ManifestCache
from registrish_lock.upstream.protocols import FetchedManifest

TAGS = [f"t{n}" for n in range(50)]


def write_config(tmp_path: Path, *, index_tags: int = 0) -> Path:
    images = [{"source": "127.0.0.1:5000/shared", "tags": TAGS}]
    if index_tags:
        images.append({"source": "127.0.0.1:5000/multi", "tags": TAGS[:index_tags]})
    path = tmp_path / "registrish.toml"
    path.write_text(tomli_w.dumps({"image": images}))
    return path


def shared_upstream(*, index_tags: int = 0) -> tuple[MemoryUpstream, str]:
    up = MemoryUpstream()
    digest = ""
    for tag in TAGS:
        digest = up.put("shared", tag, image_manifest("one"))
    for tag in TAGS[:index_tags]:
        up.put_index("multi", tag, {"linux/amd64": "m-amd64", "linux/arm64": "m-arm64"})
    return up, digest


def test_fifty_tags_of_one_digest_cost_one_get(tmp_path: Path) -> None:
    up, digest = shared_upstream(index_tags=10)
    result = resolve(load_config(write_config(tmp_path, index_tags=10)), None, up, jobs=8)
    assert {t.digest for t in result.lock.tags if t.name == "shared"} == {digest}
    assert len(result.lock.tags) == 60
    assert up.calls["head"] == 60
    # one image manifest, one index shared by ten tags, and its two children
    assert up.calls["get"] == 1 + 1 + 2


def test_the_tree_s_verified_bytes_replace_the_get(tmp_path: Path) -> None:
    up, digest = shared_upstream()
    config = load_config(write_config(tmp_path))
    data = up.manifests[digest]
    twin = Layout(config.root).path(
        Layout.rel_manifest_twin("shared", digest, mediatypes.OCI_MANIFEST)
    )
    twin.parent.mkdir(parents=True)
    twin.write_bytes(data)
    first = resolve(config, None, up)
    assert up.calls["get"] == 0

    twin.write_bytes(data + b"\n")  # other bytes (same JSON) are never trusted
    up.calls.clear()
    assert resolve(config, None, up).lock == first.lock
    assert up.calls["get"] == 1


class SlowUpstream(MemoryUpstream):
    """GETs wait until `release` is set, so concurrent askers of one digest overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        self.waiting.release()
        assert self.release.wait(10)
        return super().get_manifest(repo, ref, expected_digest=expected_digest)


def test_concurrent_askers_of_one_digest_share_one_fetch(tmp_path: Path) -> None:
    up = SlowUpstream()
    data = image_manifest("one")
    digest = up.put("shared", "t0", data)
    cache = ManifestCache(up, Layout(tmp_path / "public"))
    repo = Reference("127.0.0.1:5000", "shared")
    results: list[str] = []
    askers = [
        threading.Thread(target=lambda: results.append(cache.get(repo, digest, "shared").digest))
        for _ in range(8)
    ]
    for t in askers:
        t.start()
    assert up.waiting.acquire(timeout=10)  # one asker is inside the fetch
    up.release.set()
    for t in askers:
        t.join(10)
    assert results == [sha256_digest(data)] * 8
    assert up.calls["get"] == 1 and cache.fetched == 1
