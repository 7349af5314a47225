"""Real Apache on the generated config: a method other than GET/HEAD gets the 405 that
`registrish serve` sends (JSON OCI error, `Allow: GET, HEAD`), TRACE included; and the
.htaccess alone (no vhost, so no tag -> digest table) still serves every manifest, tags
without a Docker-Content-Digest rather than a guessed one; and the vhost's own rules (server
context) answer each route with the headers and error codes of the route table."""

from __future__ import annotations

import hashlib
import secrets
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
from registrish_lock.serving.routes import (
    IMMUTABLE,
    JSON,
    ErrorCode,
    Kind,
    Miss,
    Policy,
    classify,
    error_body,
    headers_for,
)

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


def test_the_vhost_answers_as_the_route_table(apache: str, tree: BuiltTree) -> None:
    """The vhost's server-context rules: each kind with the headers routes.py gives it
    (types from the rule that matched, Cache-Control from the variables), and each miss
    with the error code `classify` names (the 404 body from a variable, no `<If>`)."""
    policy = Policy(tag_cache_seconds=60)
    digest, media_type = tree.refs["app-oci:v1"]
    hits = {
        "/v2/": headers_for(Kind.PING, policy=policy),
        "/v2/_catalog": headers_for(Kind.CATALOG, policy=policy),
        "/v2/app-oci/tags/list": headers_for(Kind.TAGS_LIST, policy=policy),
        f"/v2/app-oci/referrers/{_random_digest()}": headers_for(Kind.REFERRERS, policy=policy),
        "/v2/app-oci/manifests/v1": headers_for(
            Kind.MANIFEST_TAG, policy=policy, media_type=media_type, digest=digest
        ),
        f"/v2/app-oci/manifests/{digest}": headers_for(
            Kind.MANIFEST_DIGEST, policy=policy, media_type=media_type, digest=digest
        ),
    }
    for path, expected in hits.items():
        r = httpx.get(f"{apache}{path}", headers=ACCEPT, timeout=10)
        assert r.status_code == 200, path
        assert {k: r.headers.get(k) for k, _ in expected} == dict(expected), path
    # Objects the tree lacks, then paths that are no object at all (`classify` says which).
    misses = {
        f"/v2/app-oci/blobs/{_random_digest()}": ErrorCode.BLOB_UNKNOWN,
        f"/v2/app-oci/manifests/{_random_digest()}": ErrorCode.MANIFEST_UNKNOWN,
        "/v2/app-oci/manifests/no-such-tag": ErrorCode.MANIFEST_UNKNOWN,
    }
    for path in (
        "/v2/app-oci/manifests/v1.~oci-manifest",
        "/v2/app-oci/tags/v1.~last",
        "/v2/no-such-thing",
        "/.htaccess",
        "/.registrish/blobs",
        "/v2/_referrers-empty",
    ):
        miss = classify(path)
        assert isinstance(miss, Miss), path
        misses[path] = miss.code
    for path, code in misses.items():
        r = httpx.get(f"{apache}{path}", headers=ACCEPT, timeout=10)
        assert (r.status_code, r.headers["content-type"]) == (404, JSON), path
        assert r.content == error_body(code), path
        assert r.headers["docker-distribution-api-version"] == "registry/2.0", path


def _random_digest() -> str:
    return "sha256:" + secrets.token_hex(32)
