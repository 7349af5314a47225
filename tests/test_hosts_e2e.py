"""End to end: nginx, Caddy and Apache started with the GENERATED configs, and
`registrish serve`, each pulled from by skopeo, podman, containerd and the Docker engine
for the four manifest kinds by tag and by digest; `registrish check` passes on each.
A host serving the tree without the config fails both pulls and `check`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hosts import start_host
from support.pulls import (
    test_check_passes,
    test_containerd,
    test_docker,
    test_podman,
    test_skopeo,
)
from support.trees import BuiltTree, build_served_tree
from testbed.clients import skopeo_copy
from testbed.procs import LOOPBACK, CommandError, free_port
from testbed.statichosts import start_python_http_server

from registrish_lock.serving.check import NOT_CONFIGURED, check_url
from registrish_lock.serving.serve import TreeResolver

pytestmark = pytest.mark.slow

# the pulls every host passes (support.pulls), collected here with this module's fixtures
__all__ = ["test_check_passes", "test_containerd", "test_docker", "test_podman", "test_skopeo"]

HOSTS = ("serve", "nginx", "caddy", "apache")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    return build_served_tree(tmp_path_factory.mktemp("e2e") / "public")


@pytest.fixture(scope="module", params=HOSTS)
def host(
    request: pytest.FixtureRequest, tree: BuiltTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`127.0.0.1:PORT` of one running host serving `tree` with its generated config."""
    server = start_host(request.param, tree, tmp_path_factory.mktemp(request.param))
    try:
        assert server.url is not None
        yield server.url.removeprefix("http://")
    finally:
        server.stop()


def test_host_without_config_fails_pulls_and_check(tree: BuiltTree, tmp_path: Path) -> None:
    port = free_port()
    server = start_python_http_server(tree.layout.root, port=port, log_dir=tmp_path)
    try:
        report = check_url(f"http://{LOOPBACK}:{port}", tree.lock)
        with pytest.raises(CommandError):
            skopeo_copy(f"{LOOPBACK}:{port}/app-oci:v1", tmp_path / "out")
    finally:
        server.stop()
    assert not report.ok
    assert any(NOT_CONFIGURED in f.problem for f in report.failures)


#: What a pusher or a WebDAV client would send; `registrish serve` and every generated host
#: config answer all of them alike.
WRITES = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND")


@pytest.mark.parametrize("method", WRITES)
def test_other_methods_get_the_405_serve_sends(host: str, tree: BuiltTree, method: str) -> None:
    expected = TreeResolver(tree.layout).answer("POST", "/v2/", {})
    assert expected.status == 405
    name, blob, _ = tree.blob
    digest = tree.refs["app-oci:v1"][0]
    paths = (
        "/v2/",
        "/v2/app-oci/manifests/v1",
        f"/v2/app-oci/manifests/{digest}",
        f"/v2/{name}/blobs/{blob}",
        "/v2/app-oci/tags/list",
        "/v2/app-oci/manifests/nope",
        "/v2/app-oci/blobs/uploads/",
    )
    for path in paths:
        r = httpx.request(method, f"http://{host}{path}", content=b"{}", timeout=10)
        where = (method, path)
        assert r.status_code == 405, where
        assert r.content == expected.body, where
        assert json.loads(r.content)["errors"][0]["code"] == "UNSUPPORTED", where
        assert r.headers.get_list("allow") == ["GET, HEAD"], where
        assert r.headers["content-type"] == "application/json", where
        assert r.headers["docker-distribution-api-version"] == "registry/2.0", where
        assert "docker-content-digest" not in r.headers, where
    assert httpx.head(f"http://{host}/v2/app-oci/manifests/v1", timeout=10).status_code == 200


def test_blob_range_requests(host: str, tree: BuiltTree) -> None:
    """A client resuming a layer asks for a byte range: every host answers 206 with exactly
    those bytes (first-last, open-ended, suffix), and 416 past the end."""
    name, blob, data = tree.blob
    url = f"http://{host}/v2/{name}/blobs/{blob}"
    size = len(data)
    assert size > 20
    cases = {
        "bytes=5-14": (5, 14),
        f"bytes={size - 3}-": (size - 3, size - 1),
        "bytes=-7": (size - 7, size - 1),
    }
    for spec, (first, last) in cases.items():
        r = httpx.get(url, headers={"Range": spec}, timeout=10)
        assert r.status_code == 206, spec
        assert r.content == data[first : last + 1], spec
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", spec
    r = httpx.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert r.status_code == 416
    whole = httpx.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
