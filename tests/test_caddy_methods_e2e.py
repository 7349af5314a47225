"""The generated Caddyfile on a real Caddy: anything but GET and HEAD gets the 405 that
`registrish serve` sends (same body, `Allow`, API version header), never the object; and a
hosts directory too long for the admin socket still gives a Caddy that starts and serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.hosts import render_host
from support.trees import BuiltTree, build_served_tree
from testbed.procs import LOOPBACK, free_port
from testbed.statichosts import start_generated

from registrish_lock.serving.hosts.caddy import ADMIN_SOCKET, MAX_SOCKET_PATH

pytestmark = pytest.mark.slow

METHODS = ("POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    return build_served_tree(tmp_path_factory.mktemp("methods") / "public")


@pytest.fixture(scope="module")
def caddy(tree: BuiltTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("caddy")
    port = free_port()
    assert render_host(tree, "caddy", tmp / "hosts", port).warnings == ()
    server = start_generated("caddy", tmp / "hosts", tmp, port=port)
    try:
        # the admin endpoint is the socket in the hosts dir, so `caddy reload` can reach it
        assert (tmp / "hosts" / ADMIN_SOCKET).is_socket()
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


def test_get_and_head_still_serve(caddy: str, tree: BuiltTree) -> None:
    """The 405 is only for the other methods: the same paths still answer GET and HEAD."""
    digest = tree.refs["app-oci:v1"][0]
    for method in ("GET", "HEAD"):
        r = httpx.request(method, f"{caddy}/v2/app-oci/manifests/v1", timeout=10)
        assert r.status_code == 200, method
        assert r.headers["docker-content-digest"] == digest
        assert "allow" not in r.headers


def test_a_hosts_dir_too_long_for_the_admin_socket_turns_admin_off(
    tree: BuiltTree, tmp_path: Path
) -> None:
    hosts_dir = tmp_path / ("h" * max(1, MAX_SOCKET_PATH - len(str(tmp_path))))
    assert len(str(hosts_dir / ADMIN_SOCKET).encode()) > MAX_SOCKET_PATH
    port = free_port()
    rendered = render_host(tree, "caddy", hosts_dir, port)
    assert len(rendered.warnings) == 1
    assert "admin off" in rendered.warnings[0] and "restart Caddy" in rendered.warnings[0]
    assert "\tadmin off\n" in (hosts_dir / "Caddyfile").read_text()
    # Caddy would refuse to start on a socket path that long: with `admin off` it serves.
    server = start_generated("caddy", hosts_dir, tmp_path, port=port)
    try:
        r = httpx.post(f"http://{LOOPBACK}:{port}/v2/app-oci/manifests/v1", timeout=10)
        assert r.status_code == 405
        assert not (hosts_dir / ADMIN_SOCKET).exists()
    finally:
        server.stop()
