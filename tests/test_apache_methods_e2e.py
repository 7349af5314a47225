"""Real Apache on the generated config: a method other than GET/HEAD gets the 405 that
`registrish serve` sends (JSON OCI error, `Allow: GET, HEAD`), TRACE included; and the
.htaccess alone (no vhost, so no tag -> digest table) still serves every manifest, tags
without a Docker-Content-Digest rather than a guessed one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hosts import render_host
from support.trees import BuiltTree, build_served_tree
from testbed.procs import LOOPBACK, free_port
from testbed.statichosts import start_apache, start_generated, write_apache_server_config

from registrish_lock.oci import mediatypes
from registrish_lock.serving.hosts.apache import UNSUPPORTED_DOC
from registrish_lock.serving.routes import IMMUTABLE, ErrorCode, error_body

pytestmark = pytest.mark.slow

WRITES = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND")
ACCEPT = {"Accept": ", ".join(sorted(mediatypes.MANIFEST_TYPES))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    return build_served_tree(tmp_path_factory.mktemp("apache-methods") / "public")


@pytest.fixture(scope="module")
def apache(tree: BuiltTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of Apache serving `tree` with the generated vhost and .htaccess."""
    tmp = tmp_path_factory.mktemp("apache")
    port = free_port()
    render_host(tree, "apache", tmp / "hosts", port)
    server = start_generated("apache", tmp / "hosts", tmp, port=port)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


def test_the_405_body_is_not_served_by_name(apache: str) -> None:
    r = httpx.get(f"{apache}/{UNSUPPORTED_DOC}", timeout=10)
    assert r.status_code == 404
    assert "allow" not in r.headers
    # GET and HEAD still answer normally next to the 405 rules.
    assert httpx.get(f"{apache}/v2/", timeout=10).status_code == 200
    assert httpx.head(f"{apache}/v2/app-oci/manifests/v1", timeout=10).status_code == 200


def test_a_tag_served_through_the_table_keeps_the_short_cache(apache: str, tree: BuiltTree) -> None:
    digest, media_type = tree.refs["multi:v1"]
    by_tag = httpx.get(f"{apache}/v2/multi/manifests/v1", headers=ACCEPT, timeout=10)
    by_digest = httpx.get(f"{apache}/v2/multi/manifests/{digest}", headers=ACCEPT, timeout=10)
    for r in (by_tag, by_digest):
        assert r.status_code == 200
        assert r.headers["docker-content-digest"] == digest
        assert r.headers["content-type"] == media_type
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    assert by_tag.headers["cache-control"] == "public, max-age=60"
    assert by_digest.headers["cache-control"] == IMMUTABLE


def test_htaccess_alone_serves_tags_without_a_digest(tree: BuiltTree, tmp_path: Path) -> None:
    """Shared hosting: only the .htaccess, under a vhost registrish did not write."""
    port = free_port()
    render_host(tree, "apache", tmp_path / "hosts", port)  # writes the .htaccess into the tree
    root = tree.layout.root.resolve()
    conf = write_apache_server_config(
        tmp_path,
        f'Listen {LOOPBACK}:{port}\nDocumentRoot "{root}"\n'
        f'<Directory "{root}">\n    Require all granted\n    AllowOverride All\n</Directory>\n',
    )
    server = start_apache(conf, port=port, ready_path="/v2/")
    base = f"http://{LOOPBACK}:{port}"
    try:
        for key in ("app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1"):
            name, tag = key.split(":")
            digest, media_type = tree.refs[key]
            by_tag = httpx.get(f"{base}/v2/{name}/manifests/{tag}", headers=ACCEPT, timeout=10)
            assert by_tag.status_code == 200, key
            assert by_tag.headers["content-type"] == media_type, key
            assert "sha256:" + hashlib.sha256(by_tag.content).hexdigest() == digest, key
            assert "docker-content-digest" not in by_tag.headers, key
            assert by_tag.headers["cache-control"] == "public, max-age=60", key
            by_digest = httpx.head(f"{base}/v2/{name}/manifests/{digest}", timeout=10)
            assert by_digest.headers["docker-content-digest"] == digest, key
            assert by_digest.headers["cache-control"] == IMMUTABLE, key
        post = httpx.post(f"{base}/v2/app-oci/manifests/v1", content=b"{}", timeout=10)
        assert post.status_code == 405
        assert post.headers["content-type"] == "application/json"
        assert post.content == error_body(ErrorCode.UNSUPPORTED)
    finally:
        server.stop()
