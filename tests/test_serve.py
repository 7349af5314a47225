"""`registrish serve`: the OCI conformance suite's read checks (design.md §6) with plain
httpx against a real server on loopback, Range, HEAD, 405, pagination, referrers
filtering, and a real `registrish serve` process stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.trees import SIGNATURE_TYPE, BuiltTree, build_tree
from testbed.procs import LOOPBACK, Server, free_port, threads, wait_until
from testbed.registrish import Serving, start_registrish_serve

from registrish_lock.oci import mediatypes
from registrish_lock.serving.routes import IMMUTABLE, PING_DOCUMENT, Policy
from registrish_lock.serving.serve import make_server, parse_range

RANDOM = "sha256:" + "12" * 32


@pytest.fixture
def tree(tmp_path: Path) -> BuiltTree:
    return build_tree(tmp_path / "tree")


@pytest.fixture
def client(tree: BuiltTree) -> Iterator[httpx.Client]:
    lines: list[str] = []
    server = make_server(
        root=tree.layout.root, host=LOOPBACK, port=0, policy=Policy(60), access_log=lines.append
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    port = server.server_address[1]
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}") as c:
            yield c
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert lines, "every request is logged"


def test_ping(client: httpx.Client) -> None:
    for path in ("/v2/", "/v2"):
        r = client.get(path)
        assert (r.status_code, r.content) == (200, PING_DOCUMENT)
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Cache-Control"] == "public, max-age=60"
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("key", ["app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1"])
def test_manifest_by_tag_and_digest_head_and_get(
    client: httpx.Client, tree: BuiltTree, key: str
) -> None:
    name, tag = key.split(":")
    digest, media_type = tree.refs[key]
    for ref in (tag, digest):
        head = client.head(f"/v2/{name}/manifests/{ref}")
        get = client.get(f"/v2/{name}/manifests/{ref}")
        for r in (head, get):
            assert r.status_code == 200
            assert r.headers["Content-Type"] == media_type
            assert r.headers["Docker-Content-Digest"] == digest
            assert r.headers["Content-Length"] == str(len(get.content))
        assert head.content == b""
        assert "sha256:" + hashlib.sha256(get.content).hexdigest() == digest
        expected_cache = IMMUTABLE if ref == digest else "public, max-age=60"
        assert get.headers["Cache-Control"] == expected_cache


def test_blob_head_get_and_ranges(client: httpx.Client, tree: BuiltTree) -> None:
    name, digest, data = tree.blob
    path = f"/v2/{name}/blobs/{digest}"
    head = client.head(path)
    assert (head.status_code, head.content, head.headers["Content-Length"]) == (
        200,
        b"",
        str(len(data)),
    )
    get = client.get(path)
    assert get.content == data
    assert get.headers["Docker-Content-Digest"] == digest
    assert get.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in get.headers
    part = client.get(path, headers={"Range": "bytes=5-14"})
    assert part.status_code == 206
    assert part.content == data[5:15]
    assert part.headers["Content-Range"] == f"bytes 5-14/{len(data)}"
    tail = client.get(path, headers={"Range": "bytes=-7"})
    assert (tail.status_code, tail.content) == (206, data[-7:])
    beyond = client.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/v2/app-oci/manifests/{RANDOM}", 404, "MANIFEST_UNKNOWN"),
        ("/v2/app-oci/manifests/missing-tag-1", 404, "MANIFEST_UNKNOWN"),
        ("/v2/app-oci/manifests/sha256:baddigeststring", 404, "MANIFEST_UNKNOWN"),
        (f"/v2/app-oci/blobs/{RANDOM}", 404, "BLOB_UNKNOWN"),
        ("/v2/nope/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/app-oci/manifests/v1.~oci-manifest", 404, "MANIFEST_UNKNOWN"),
        ("/.private/secret", 404, "NAME_UNKNOWN"),
        ("/v2/_referrers-empty", 404, "NAME_UNKNOWN"),
    ],
)
def test_missing_is_404_with_oci_error(
    client: httpx.Client, path: str, status: int, code: str
) -> None:
    r = client.get(path)
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["errors"][0]["code"] == code
    head = client.head(path)
    assert (head.status_code, head.content) == (status, b"")


def test_tags_list_and_last(client: httpx.Client) -> None:
    full = client.get("/v2/app-oci/tags/list")
    assert full.status_code == 200
    assert full.json()["tags"] == ["latest", "v1", "v2"]
    after = client.get("/v2/app-oci/tags/list", params={"last": "latest"})
    assert after.json()["tags"] == ["v1", "v2"]
    page = client.get("/v2/app-oci/tags/list", params={"n": "1"})
    assert page.json()["tags"] == ["latest"]
    assert page.headers["Link"] == '</v2/app-oci/tags/list?n=1&last=latest>; rel="next"'
    last_page = client.get("/v2/app-oci/tags/list", params={"n": "2", "last": "latest"})
    assert last_page.json()["tags"] == ["v1", "v2"]
    assert "Link" not in last_page.headers
    catalog = client.get("/v2/_catalog")
    assert "team/tools/app" in catalog.json()["repositories"]


def test_referrers(client: httpx.Client, tree: BuiltTree) -> None:
    unknown = client.get(f"/v2/app-oci/referrers/{RANDOM}")
    assert unknown.status_code == 200
    assert unknown.headers["Content-Type"] == mediatypes.OCI_INDEX
    assert unknown.json()["manifests"] == []
    stored = client.get(f"/v2/app-oci/referrers/{tree.signed}")
    assert [m["artifactType"] for m in stored.json()["manifests"]] == [SIGNATURE_TYPE]
    assert "OCI-Filters-Applied" not in stored.headers
    filtered = client.get(
        f"/v2/app-oci/referrers/{tree.signed}", params={"artifactType": "application/other"}
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert filtered.headers["Content-Type"] == mediatypes.OCI_INDEX
    assert filtered.json()["manifests"] == []
    kept = client.get(
        f"/v2/app-oci/referrers/{tree.signed}", params={"artifactType": SIGNATURE_TYPE}
    )
    assert len(kept.json()["manifests"]) == 1
    bad = client.get("/v2/app-oci/referrers/sha256:baddigeststring")
    assert bad.status_code in (400, 404)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(client: httpx.Client, method: str) -> None:
    r = client.request(method, "/v2/app-oci/manifests/v1")
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=3-", 10, (3, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes=10-", 10, False),
        ("bytes=-0", 10, False),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=x-1", 10, None),
        ("bytes=5-2", 10, None),
    ],
)
def test_parse_range(header: str, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_serve_process_logs_and_stops_on_sigterm(tree: BuiltTree, tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "registrish_lock", "serve", "-c", str(tmp_path / "none.toml")]
    argv += ["--root", str(tree.layout.root), "--port", str(port)]
    server = Server("serve", argv, log_dir=tmp_path)
    server.start()
    try:
        server.wait_http(f"http://{LOOPBACK}:{port}/v2/", status=200)
        r = httpx.get(f"http://{LOOPBACK}:{port}/v2/app-oci/manifests/v1")
        assert r.status_code == 200
        # what docker and skopeo send when they probe for TLS: binary, not a request line
        with socket.create_connection((LOOPBACK, port), timeout=5) as probe:
            probe.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x1b[2J\r\n\r\n")
            assert b"400" in probe.recv(4096)  # answered as a bad request (HTTP/0.9 style)
        proc = server._proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # 0.02 s here; generous for a loaded machine
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert '"GET /v2/app-oci/manifests/v1 HTTP/1.1" 200' in log
    assert "\\x16\\x03\\x01" in log and "\\x1b[2J" in log  # escaped, never raw
    assert all(line.isprintable() for line in log.splitlines())
    assert "stopped" in log


@contextlib.contextmanager
def quiet_serve(root: Path, log_dir: Path) -> Iterator[tuple[Serving, list[str]]]:
    """`registrish serve -q` as a process, answering; yields it and, once stopped,
    its output (in the list) after checking it exited 0 on SIGTERM. A serve that ignores
    the SIGTERM is killed, never left running, and fails the test."""
    serving = start_registrish_serve(log_dir=log_dir, root=root)
    output: list[str] = []
    try:
        yield serving, output
    finally:
        code = serving.server.stop(timeout=30)  # generous for a loaded machine
        output.append(serving.server.log_path.read_text())
    assert not serving.server.killed, f"serve ignored SIGTERM:\n{output[0]}"
    assert code == 0, output[0]


def test_serve_quiet_has_no_access_log(tree: BuiltTree, tmp_path: Path) -> None:
    with quiet_serve(tree.layout.root, tmp_path) as (_port, stderr):
        pass
    assert "GET /v2/" not in stderr[0]


def test_serve_without_tree_fails_with_hint(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "registrish_lock", "serve", "--root", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 6
    assert "no registry tree here" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_tags_file_bytes_served_verbatim(client: httpx.Client, tree: BuiltTree) -> None:
    on_disk = tree.layout.path("v2/app-oci/tags/list").read_bytes()
    assert client.get("/v2/app-oci/tags/list").content == on_disk
    assert json.loads(on_disk)["name"] == "app-oci"


def test_client_hanging_up_mid_body_is_not_an_error(tree: BuiltTree, tmp_path: Path) -> None:
    """A cancelled pull resets the connection while a blob is being sent: serve must log no
    traceback (even with -q it used to print one per connection) and keep serving."""
    name = tree.lock.tags[0].name
    big = tree.layout.repo_dir(name) / "blobs" / ("sha256:" + "f" * 64)
    big.write_bytes(bytes(32 << 20))  # far larger than the socket buffers
    with quiet_serve(tree.layout.root, tmp_path) as (serving, stderr):
        port = serving.port
        for _ in range(3):
            with socket.create_connection((LOOPBACK, port)) as sock:
                request = f"GET /v2/{name}/blobs/sha256:{'f' * 64} HTTP/1.1\r\nHost: x\r\n\r\n"
                sock.sendall(request.encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                # close with RST, mid-body
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # every reset connection's thread is done (and would have logged by now)
        assert wait_until(lambda: threads(serving.server.pid) == 1)
        assert httpx.get(f"http://{LOOPBACK}:{port}/v2/").status_code == 200
    assert "Traceback" not in stderr[0] and "Error" not in stderr[0], stderr[0]
