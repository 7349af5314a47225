"""End to end on the vendors' own local servers (from npm, offline, on 127.0.0.1):
Cloudflare Pages' asset server and rules engine (`wrangler pages dev`) and Netlify's
(`netlify dev`), serving a tree with the `_headers`, `_redirects`, `v2/index.html` and
`404.html` that `sync` writes, plus the browse page at the root as `sync` leaves it.

skopeo, podman, containerd and the Docker engine pull the four manifest kinds by tag and by
digest and `registrish check` passes (the tests of support/pulls.py, run here against these
hosts as test_hosts_e2e.py runs them against its own), missing paths are JSON 404s, and
nothing of the store is served.

netlify-cli lets its static server's Content-Type and Cache-Control overwrite `_headers`
(netlify/cli#990), so the pulls run with the test-only shim that restores production's
order (`testbed.vendorhosts.HEADERS_WIN_SHIM`); without it, every other header must still
land on exactly the paths the route table says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hosts import render_host
from support.pulls import test_check_passes, test_containerd, test_docker, test_podman, test_skopeo
from support.trees import BuiltTree, build_served_tree
from testbed.browsesite import assert_site_served
from testbed.clients import Dockerd, docker_pull
from testbed.procs import CommandError, Server
from testbed.vendorhosts import start_netlify, start_wrangler

from registrish_lock.serving.browse_page import render_tree_site, write_site
from registrish_lock.serving.routes import (
    Kind,
    Policy,
    entries,
    headers_for,
    read_objects,
)

pytestmark = pytest.mark.slow

__all__ = ["test_check_passes", "test_containerd", "test_docker", "test_podman", "test_skopeo"]

#: host parameter → (renderer, how it is started)
HOSTS = {"cloudflare": "cloudflare", "netlify": "netlify"}
MISSING_DIGEST = "sha256:" + "0" * 64


def _tree(base: Path, renderer: str) -> BuiltTree:
    tree = build_served_tree(base / "public")
    render_host(tree, renderer, base / "hosts", 0)
    # the browse page sync writes: with it and no 404.html, Cloudflare answered every
    # missing path 200 with this page
    write_site(tree.layout, render_tree_site(tree.layout, tree.lock))
    return tree


def _start(host: str, root: Path, tmp: Path, *, headers_win: bool = True) -> Server:
    if host == "cloudflare":
        return start_wrangler(root, tmp)
    return start_netlify(root, tmp, headers_win=headers_win)


@pytest.fixture(scope="module", params=list(HOSTS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, BuiltTree, str]]:
    """(host name, tree, `127.0.0.1:PORT`) of one vendor server serving its own tree."""
    name: str = request.param
    base = tmp_path_factory.mktemp(name)
    tree = _tree(base, HOSTS[name])
    server = _start(name, tree.layout.root, base / "server")
    try:
        assert server.url is not None
        yield name, tree, server.url.removeprefix("http://")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tree(served: tuple[str, BuiltTree, str]) -> BuiltTree:
    return served[1]


@pytest.fixture(scope="module")
def host(served: tuple[str, BuiltTree, str]) -> str:
    return served[2]


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* spell them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_servers_listen_on_loopback_only(served: tuple[str, BuiltTree, str]) -> None:
    name, tree, host = served
    ports = [int(host.rpartition(":")[2])]
    if name == "netlify":  # and its static server behind the proxy
        toml = (tree.layout.root.parent / "server/project/netlify.toml").read_text()
        ports.append(int(toml.rpartition("=")[2]))
    for port in ports:
        assert _listeners(port) == {"0100007F"}, port  # 127.0.0.1, little-endian hex


def test_missing_paths_are_json_404s(host: str) -> None:
    for path in (
        "/v2/app-oci/manifests/nope",
        f"/v2/app-oci/manifests/{MISSING_DIGEST}",
        f"/v2/app-oci/blobs/{MISSING_DIGEST}",
        "/v2/nope/tags/list",
        "/nothing/here",
    ):
        r = httpx.get(f"http://{host}{path}", timeout=30)
        assert r.status_code == 404, path
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN", path


def test_browse_page_and_its_data_files(tree: BuiltTree, host: str) -> None:
    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        r = httpx.get(f"http://{host}{path}", timeout=30)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

    # both hosts redirect /index.html to /; the rules file sets the data files' headers
    assert_site_served(get, render_tree_site(tree.layout, tree.lock), page_paths=("/",))


def test_ping_is_json(host: str) -> None:
    r = httpx.get(f"http://{host}/v2/", timeout=30)
    assert r.status_code == 200 and r.json() == {}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


def test_nothing_of_the_store_or_the_rules_is_served(
    served: tuple[str, BuiltTree, str], host: str
) -> None:
    name, tree, _ = served
    store = tree.layout.state
    assert store.parent == tree.layout.root.parent and (store / "blobs").is_dir()
    paths = ["/.registrish/lock", f"/{store.name}/lock", f"/%2e%2e/{store.name}/lock"]
    paths += [f"/../{store.name}/blobs/sha256/{p.name}" for p in (store / "blobs/sha256").iterdir()]
    for path in paths:
        r = httpx.get(f"http://{host}{path}", timeout=30)
        assert r.status_code == 404, path
    for path in ("/_headers", "/_redirects"):
        r = httpx.get(f"http://{host}{path}", timeout=30)
        # Netlify: a forced 404 in _redirects; Cloudflare never deploys them (wrangler dev
        # answers 502 "Could not serve static asset", production has no such asset)
        assert r.status_code in ((404,) if name == "netlify" else (404, 502)), path
        assert b"Content-Type" not in r.content, path


def test_docker_says_manifest_unknown_for_a_missing_tag(host: str, dockerd: Dockerd) -> None:
    with pytest.raises(CommandError, match="manifest unknown") as info:
        docker_pull(dockerd, f"{host}/app-oci:nope")
    assert "invalid character" not in info.value.stderr


def test_netlify_without_the_shim_puts_every_other_header_on_its_paths(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """netlify-cli as it ships: its static server's Content-Type and Cache-Control win over
    `_headers` (netlify/cli#990), so only the other headers can be judged — on every path
    the route table lists, plus the referrers rewrite and the hidden rules files."""
    base = tmp_path_factory.mktemp("netlify-plain")
    tree = _tree(base, "netlify")
    server = start_netlify(tree.layout.root, base / "server", headers_win=False)
    policy = Policy()
    try:
        with httpx.Client(base_url=server.url or "", timeout=30) as client:
            for entry in entries(read_objects(tree.layout, tree.lock), policy):
                if entry.kind in (Kind.PING, Kind.BROWSE):
                    continue
                manifest = entry.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST)
                expected = dict(
                    headers_for(
                        entry.kind,
                        policy=policy,
                        media_type=entry.content_type if manifest else None,
                        digest=entry.digest if manifest else None,
                    )
                )
                r = client.head("/" + entry.path)
                assert r.status_code == 200, entry.path
                for key, value in expected.items():
                    if key not in ("Content-Type", "Cache-Control"):
                        assert r.headers.get(key) == value, (entry.path, key)
                if not manifest:
                    assert "docker-content-digest" not in r.headers, entry.path
            unknown = client.get(f"/v2/app-oci/referrers/{MISSING_DIGEST}")
            assert unknown.status_code == 200 and unknown.json()["manifests"] == []
            for path in ("/_headers", "/_redirects"):
                assert client.get(path).status_code == 404, path
            ping = client.get("/v2/")
            assert ping.status_code == 200 and ping.json() == {}
    finally:
        server.stop()
