"""The OCI distribution-spec conformance suite's READ-ONLY checks (design.md §6), written
with httpx because the Go suite is not available offline, against `registrish serve` and
nginx, Caddy and Apache started with their GENERATED configs, all serving the tree that
`registrish lock` + `sync` made from the real seeded upstream.

Pull: HEAD/GET of manifests by tag and by digest and of blobs → 200 (HEAD with an empty
body), exact Content-Type, Docker-Content-Digest equal to the digest (required here: oras-go
needs it on HEAD of tags); a random digest, a `missing-…` tag → 404;
`sha256:baddigeststring` → 404 or 400. Discovery: tags/list → every tag, and `?last=<tag>`
→ exactly the tags after it (byte-wise order); referrers of a random digest → 200, the exact
index type, no manifests; referrers of a subject → 200, the exact type, a valid index.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hosts import start_host
from support.trees import BuiltTree
from testbed.images import MANY_TAGS, SeededUpstream
from testbed.registrish import registrish

from registrish_lock.lock.lockfile import Lock, read_lock
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import parse_manifest
from registrish_lock.tree.layout import Layout

pytestmark = pytest.mark.slow

HOSTS = ("serve", "nginx", "caddy", "apache")
IMAGES = (
    ("app-oci", ("v1",)),
    ("app-docker", ("v1",)),
    ("multi", ("v1",)),
    ("multi-docker", ("v1",)),
    ("many", MANY_TAGS),
)
ACCEPT = {"Accept": mediatypes.ACCEPT}


def _random_digest() -> str:
    return "sha256:" + secrets.token_hex(32)


@pytest.fixture(scope="module")
def synced(seeded_upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    """`registrish lock` + `sync` of the seeded upstream (all four kinds, a many-tag repo)."""
    tmp = tmp_path_factory.mktemp("conformance")
    text = '[registry]\nroot = "public"\nhosts = []\n\n'
    for name, tags in IMAGES:
        listed = ", ".join(f'"{t}"' for t in tags)
        text += f'[[image]]\nsource = "{seeded_upstream.host}/{name}"\nname = "{name}"\n'
        text += f"tags = [{listed}]\n\n"
    text += f'[registries."{seeded_upstream.host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    registrish(config, "lock")
    registrish(config, "sync")
    lock = read_lock(tmp / "registrish.lock")
    layout = Layout(tmp / "public")
    app = next(t for t in lock.tags if t.name == "app-oci")
    config_blob = parse_manifest(
        layout.path(Layout.rel_manifest("app-oci", app.digest)).read_bytes()
    )
    blob = config_blob.blobs[0]
    data = layout.path(Layout.rel_blob("app-oci", blob.digest)).read_bytes()
    return BuiltTree(
        layout=layout,
        lock=lock,
        refs={f"{t.name}:{t.tag}": (t.digest, t.media_type) for t in lock.tags},
        blob=("app-oci", blob.digest, data),
        signed=app.digest,
    )


@pytest.fixture(scope="module", params=HOSTS)
def base(
    request: pytest.FixtureRequest, synced: BuiltTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    server = start_host(request.param, synced, tmp_path_factory.mktemp(f"c-{request.param}"))
    try:
        assert server.url is not None
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifests(lock: Lock) -> list[tuple[str, str, str, str]]:
    """(name, reference, digest, media type): every tag and every manifest by digest."""
    found: set[tuple[str, str, str, str]] = set()
    for t in lock.tags:
        found.add((t.name, t.tag, t.digest, t.media_type))
        found.add((t.name, t.digest, t.digest, t.media_type))
        found.update((t.name, p.digest, p.digest, p.media_type) for p in t.platforms)
    return sorted(found)


def test_ping(client: httpx.Client) -> None:
    resp = client.get("/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_manifests_by_tag_and_digest(client: httpx.Client, synced: BuiltTree) -> None:
    for name, ref, digest, media_type in _manifests(synced.lock):
        path = f"/v2/{name}/manifests/{ref}"
        head = client.head(path, headers=ACCEPT)
        assert head.status_code == 200, path
        assert head.content == b""
        assert head.headers["Content-Type"] == media_type, path
        # oras-go / go-containerregistry remote.Head need it on tags too
        assert head.headers.get("Docker-Content-Digest") == digest, path
        got = client.get(path, headers=ACCEPT)
        assert got.status_code == 200, path
        assert got.headers["Content-Type"] == media_type, path
        assert got.headers.get("Docker-Content-Digest") == digest, path
        assert _sha(got.content) == digest, path


def test_blobs(client: httpx.Client, synced: BuiltTree) -> None:
    checked = 0
    for name, _ref, digest, media_type in _manifests(synced.lock):
        if mediatypes.is_index(media_type):
            continue
        data = synced.layout.path(Layout.rel_manifest(name, digest)).read_bytes()
        for blob in parse_manifest(data).blobs:
            path = f"/v2/{name}/blobs/{blob.digest}"
            head = client.head(path)
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers.get("Docker-Content-Digest", blob.digest) == blob.digest
            got = client.get(path)
            assert got.status_code == 200, path
            assert "Content-Encoding" not in got.headers
            assert _sha(got.content) == blob.digest and len(got.content) == blob.size
            checked += 1
    assert checked >= 8  # config + layer of each image manifest


def test_missing_objects_are_404(client: httpx.Client) -> None:
    for path in (
        f"/v2/app-oci/manifests/{_random_digest()}",
        f"/v2/app-oci/blobs/{_random_digest()}",
        f"/v2/app-oci/manifests/missing-{secrets.token_hex(4)}",
    ):
        for method in ("HEAD", "GET"):
            resp = client.request(method, path, headers=ACCEPT)
            assert resp.status_code == 404, (method, path)
        body = client.get(path, headers=ACCEPT).json()
        assert body["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN")


def test_bad_digest_is_404_or_400(client: httpx.Client) -> None:
    for section in ("manifests", "blobs"):
        resp = client.get(f"/v2/app-oci/{section}/sha256:baddigeststring", headers=ACCEPT)
        assert resp.status_code in (400, 404), section


def test_tags_list_and_last(client: httpx.Client, synced: BuiltTree) -> None:
    for name, tags in IMAGES:
        full = client.get(f"/v2/{name}/tags/list")
        assert full.status_code == 200
        assert full.headers["Content-Type"] == "application/json"
        assert sorted(full.json()["tags"]) == sorted(tags)
    ordered = sorted(MANY_TAGS, key=str.encode)  # byte-wise, as the spec orders tags
    assert len(ordered) >= 2
    for i, tag in enumerate(ordered):
        resp = client.get("/v2/many/tags/list", params={"last": tag})
        assert resp.status_code == 200, tag
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json() == {"name": "many", "tags": ordered[i + 1 :]}, tag


def test_referrers_of_a_random_digest_is_an_empty_index(client: httpx.Client) -> None:
    resp = client.get(f"/v2/app-oci/referrers/{_random_digest()}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX  # exactly: no charset
    doc = resp.json()
    assert doc["schemaVersion"] == 2 and doc["manifests"] == []


def test_referrers_of_subjects_are_valid_indexes(client: httpx.Client, synced: BuiltTree) -> None:
    for name, _ref, digest, _media_type in _manifests(synced.lock):
        resp = client.get(f"/v2/{name}/referrers/{digest}")
        assert resp.status_code == 200, digest
        assert resp.headers["Content-Type"] == mediatypes.OCI_INDEX
        doc = json.loads(resp.content)
        assert doc["schemaVersion"] == 2
        assert doc["mediaType"] == mediatypes.OCI_INDEX
        assert isinstance(doc["manifests"], list)


def test_nothing_answers_403(client: httpx.Client) -> None:
    """A static host must say 404 (S3's 403 breaks skopeo/podman), also for the twins
    and `last` pages that hosts serve only through their routes."""
    for path in (
        "/v2/nope/tags/list",
        "/v2/many/tags/latest.~last",
        "/v2/app-oci/manifests/v1.~oci-manifest",
        "/.private/secret",
    ):
        assert client.get(path).status_code == 404, path


def test_tag_list_files_are_in_the_tree(synced: BuiltTree, tmp_path: Path) -> None:
    """sync wrote one `last` page per tag of each repository."""
    del tmp_path
    for name, tags in IMAGES:
        for tag in tags:
            assert synced.layout.path(Layout.rel_tags_last(name, tag)).is_file(), (name, tag)
