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
from test_hosts_tree import BuiltTree, build_served_tree
from testbed.clients import Containerd, Dockerd, ctr_pull, docker_pull, podman_pull, skopeo_copy
from testbed.procs import LOOPBACK, CommandError, Server, free_port
from testbed.registrish import start_registrish_serve
from testbed.statichosts import start_generated, start_python_http_server

from registrish_lock.serving.check import NOT_CONFIGURED, check_url
from registrish_lock.serving.hosts import make_context, render_hosts, write_if_changed
from registrish_lock.serving.hosts.base import Rendered
from registrish_lock.serving.routes import Policy
from registrish_lock.serving.serve import TreeResolver

pytestmark = pytest.mark.slow

KINDS = ("app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1")
HOSTS = ("serve", "nginx", "caddy", "apache")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    return build_served_tree(tmp_path_factory.mktemp("e2e") / "public")


def render_host(tree: BuiltTree, host: str, hosts_dir: Path, port: int) -> Rendered:
    """Write `host`'s generated configs for `tree`, listening on 127.0.0.1:`port`."""
    ctx = make_context(
        layout=tree.layout,
        hosts_dir=hosts_dir,
        listen_host=LOOPBACK,
        listen_port=port,
        policy=Policy(),
        lock=tree.lock,
        hosts=(host,),
    )
    (rendered,) = render_hosts(ctx, (host,))
    for out in rendered.outputs:
        write_if_changed(out.path, out.data)
    return rendered


def _start(host: str, tree: BuiltTree, tmp: Path) -> Server:
    port = free_port()
    hosts_dir = tmp / "hosts"
    if host == "serve":
        return start_registrish_serve(log_dir=tmp, root=tree.layout.root, name="serve").server
    render_host(tree, host, hosts_dir, port)
    return start_generated(host, hosts_dir, tmp, port=port)


@pytest.fixture(scope="module", params=HOSTS)
def host(
    request: pytest.FixtureRequest, tree: BuiltTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`127.0.0.1:PORT` of one running host serving `tree` with its generated config."""
    server = _start(request.param, tree, tmp_path_factory.mktemp(request.param))
    try:
        assert server.url is not None
        yield server.url.removeprefix("http://")
    finally:
        server.stop()


def _refs(tree: BuiltTree, host: str) -> list[tuple[str, str]]:
    """(reference, root digest) for each kind, by tag and by digest."""
    refs = []
    for key in KINDS:
        name, tag = key.split(":")
        digest = tree.refs[key][0]
        refs += [(f"{host}/{name}:{tag}", digest), (f"{host}/{name}@{digest}", digest)]
    return refs


def test_check_passes(host: str, tree: BuiltTree) -> None:
    report = check_url(f"http://{host}", tree.lock, deep=True)
    assert report.failures == []


def test_skopeo(host: str, tree: BuiltTree, tmp_path: Path) -> None:
    for i, (ref, digest) in enumerate(_refs(tree, host)):
        result = skopeo_copy(ref, tmp_path / f"s{i}", all_platforms=True)
        assert result.digest == digest, ref


def test_podman(host: str, tree: BuiltTree, tmp_path: Path) -> None:
    for ref, digest in _refs(tree, host):
        result = podman_pull(ref, tmp_path)
        assert result.digest == digest, ref


def test_containerd(host: str, tree: BuiltTree, containerd: Containerd) -> None:
    for ref, digest in _refs(tree, host):
        result = ctr_pull(containerd, ref)
        assert result.digest == digest, ref


def test_docker(host: str, tree: BuiltTree, dockerd: Dockerd) -> None:
    for ref, digest in _refs(tree, host):
        result = docker_pull(dockerd, ref)
        assert result.digest == digest, ref


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
