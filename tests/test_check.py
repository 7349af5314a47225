"""`registrish check`: the local tree, a good deployment (`serve`), a host without the
config (`python3 -m http.server`), and the S3 403 trap (an httpx MockTransport)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.trees import BuiltTree, build_tree
from testbed.images import SeededUpstream
from testbed.procs import LOOPBACK, free_port
from testbed.statichosts import start_python_http_server

from registrish_lock.lock.lockfile import read_lock
from registrish_lock.serving.check import NOT_CONFIGURED, check_local, check_url
from registrish_lock.serving.routes import EMPTY_REFERRERS, EMPTY_REFERRERS_REL, IMMUTABLE, Policy
from registrish_lock.serving.serve import TreeResolver, make_server
from registrish_lock.tree.layout import Layout


@pytest.fixture
def tree(tmp_path: Path) -> BuiltTree:
    return build_tree(tmp_path / "tree")


@pytest.fixture
def serve_url(tree: BuiltTree) -> Iterator[str]:
    server = make_server(
        root=tree.layout.root, host=LOOPBACK, port=0, policy=Policy(), access_log=None
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_local_tree_passes(tree: BuiltTree) -> None:
    report = check_local(tree.layout, tree.lock)
    assert report.failures == []
    assert report.checked > 20


def test_local_finds_corruption_missing_twin_and_broken_hardlink(tree: BuiltTree) -> None:
    name, digest, data = tree.blob
    tree.layout.store_blob(digest).write_bytes(data[:-1] + b"X")  # same inode: repo path too
    tag_digest, media_type = tree.refs["app-docker:v1"]
    twin = tree.layout.path(Layout.rel_manifest_twin("app-docker", "v1", media_type))
    twin.unlink()
    multi_digest, multi_type = tree.refs["multi:v1"]
    mtwin = tree.layout.path(Layout.rel_manifest_twin("multi", multi_digest, multi_type))
    data_bytes = mtwin.read_bytes()
    mtwin.unlink()
    mtwin.write_bytes(data_bytes)  # a copy, not a hardlink
    report = check_local(tree.layout, tree.lock)
    problems = {f.path: f.problem for f in report.failures}
    assert "hashes to" in problems[Layout.rel_blob(name, digest)]
    assert "is missing" in problems[Layout.rel_manifest("app-docker", "v1")]
    assert "not a hardlink" in problems[Layout.rel_manifest("multi", multi_digest)]
    assert tag_digest  # the tag itself still hashes right
    assert len(report.failures) == 3


def test_check_url_passes_against_serve(tree: BuiltTree, serve_url: str) -> None:
    report = check_url(serve_url, tree.lock, deep=True)
    assert report.failures == []
    assert report.checked >= len(tree.lock.tags) + 10


def test_check_url_fails_on_a_host_without_the_config(tree: BuiltTree, tmp_path: Path) -> None:
    port = free_port()
    server = start_python_http_server(tree.layout.root, port=port, log_dir=tmp_path)
    try:
        report = check_url(f"http://{LOOPBACK}:{port}", tree.lock)
    finally:
        server.stop()
    assert not report.ok
    messages = [f.problem for f in report.failures]
    expected = (
        f"manifest v2/app-oci/manifests/v1 served as application/octet-stream, expected "
        f"application/vnd.oci.image.manifest.v1+json: {NOT_CONFIGURED}"
    )
    assert expected in messages
    referrers = [m for m in messages if m.startswith("referrers")]
    assert referrers and all(NOT_CONFIGURED in m for m in referrers)


def test_check_url_explains_the_s3_403_trap(tree: BuiltTree) -> None:
    resolver = TreeResolver(tree.layout)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = resolver.answer(request.method, request.url.raw_path.decode(), {})
        if answer.status == 404:  # an S3 bucket without ListBucket for anonymous readers
            return httpx.Response(403, content=b"<Error>AccessDenied</Error>")
        body = answer.body if answer.file is None else answer.file.read_bytes()
        headers = dict(answer.headers)
        headers["Content-Length"] = str(answer.length)
        return httpx.Response(
            answer.status, headers=headers, content=body if request.method == "GET" else b""
        )

    report = check_url("http://bucket.example", tree.lock, transport=httpx.MockTransport(handler))
    problems = [f.problem for f in report.failures]
    assert len(problems) == 2
    assert all("ListBucket" in p for p in problems)


def test_check_url_sends_a_request_again_once_after_a_reset(tree: BuiltTree) -> None:
    """A host closing a kept-alive connection as it is reused is not a failure; a host
    resetting every time is."""
    resolver = TreeResolver(tree.layout)
    resets: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        if "/manifests/" in path and resets.get(path + request.method, 0) < limit:
            resets[path + request.method] = resets.get(path + request.method, 0) + 1
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        answer = resolver.answer(request.method, path, {})
        body = answer.body if answer.file is None else answer.file.read_bytes()
        content = body if request.method == "GET" else b""
        # a HEAD answer says the length of the body it leaves out, as a real server does
        headers = {**dict(answer.headers), "Content-Length": str(len(body))}
        return httpx.Response(answer.status, headers=headers, content=content)

    limit = 1
    report = check_url("http://h.example", tree.lock, transport=httpx.MockTransport(handler))
    assert resets and report.failures == []
    limit, resets = 2, {}
    report = check_url("http://h.example", tree.lock, transport=httpx.MockTransport(handler))
    assert report.failures and all("ReadError" in f.problem for f in report.failures)


def test_check_url_flags_wrong_digest_header_and_compression(tree: BuiltTree) -> None:
    resolver = TreeResolver(tree.layout)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = resolver.answer(request.method, request.url.raw_path.decode(), {})
        headers = dict(answer.headers)
        if "/blobs/" in request.url.path:
            headers["Content-Encoding"] = "gzip"
        if headers.get("Docker-Content-Digest"):
            headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
        body = answer.body if answer.file is None else answer.file.read_bytes()
        return httpx.Response(answer.status, headers=headers, content=body)

    report = check_url("http://h.example", tree.lock, transport=httpx.MockTransport(handler))
    problems = " ".join(f.problem for f in report.failures)
    assert "Docker-Content-Digest is sha256:000" in problems
    assert "Content-Encoding gzip" in problems
    # a wrong digest on a tag is what a host config older than the tree sends
    digest_failures = [f for f in report.failures if "Docker-Content-Digest" in f.problem]
    by_tag = [
        f.problem
        for f in digest_failures
        if "/manifests/" in f.path and "/manifests/sha256:" not in f.path
    ]
    by_digest = [f.problem for f in digest_failures if "/manifests/sha256:" in f.path]
    assert by_tag and all("reload the server after every sync" in p for p in by_tag)
    assert by_digest and not any("reload" in p for p in by_digest)


def test_check_command_local_and_json(
    tree: BuiltTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from registrish_lock.cli import main
    from registrish_lock.lock.lockfile import write_lock

    config = tmp_path / "registrish.toml"
    config.write_text('[registry]\nroot = "tree"\n')
    write_lock(config.with_suffix(".lock"), tree.lock)
    assert main(["check", "-c", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out
    os.unlink(tree.layout.path(Layout.rel_manifest("app-oci", "v1")))
    assert main(["check", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "v2/app-oci/manifests/v1" in out and "missing manifest file" in out


@pytest.mark.slow
def test_real_lock_and_sync_then_check_local_and_serve(
    seeded_upstream: SeededUpstream, tmp_path: Path
) -> None:
    """The tree `registrish sync` writes (with its host configs) passes `check --local`
    and `check URL` against `registrish serve`."""
    from registrish_lock.cli import main

    host = seeded_upstream.host
    config = tmp_path / "registrish.toml"
    images = "".join(
        f'[[image]]\nsource = "{host}/{name}"\ntags = ["v1"]\n'
        for name in ("app-oci", "app-docker", "multi", "multi-docker")
    )
    config.write_text(
        f'[registry]\nroot = "public"\nhosts = ["nginx", "caddy", "apache", "netlify", "s3"]\n'
        f'[registries."{host}"]\ninsecure = true\n{images}'
    )
    assert main(["lock", "-c", str(config), "-q"]) == 0
    assert main(["sync", "-c", str(config), "-q"]) == 0
    layout = Layout(tmp_path / "public")
    assert layout.path(EMPTY_REFERRERS_REL).read_bytes() == EMPTY_REFERRERS
    assert (tmp_path / "hosts" / "registrish.conf").is_file()
    assert (layout.root / "_headers").is_file()
    lock = read_lock(config.with_suffix(".lock"))
    local = check_local(layout, lock)
    assert local.failures == []
    server = make_server(root=layout.root, host=LOOPBACK, port=0, policy=Policy(), access_log=None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        report = check_url(f"http://{LOOPBACK}:{server.server_address[1]}", lock, deep=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert report.failures == []
    assert main(["hosts", "-c", str(config), "-q"]) == 0  # nothing changed: nothing rewritten


PAGE = b"<!doctype html><html><head><title>browse</title></head></html>"


def test_check_url_flags_an_html_ping_html_404s_and_a_digest_without_length(
    tree: BuiltTree,
) -> None:
    """What Cloudflare Pages did before 404.html and v2/index.html: the browse page for the
    ping and for every missing path (200 or 404), and no Content-Length beside the digest."""
    resolver = TreeResolver(tree.layout)

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        answer = resolver.answer(request.method, path, {})
        if path == "/v2/":
            return httpx.Response(200, headers={"Content-Type": "application/json"}, content=PAGE)
        if "/referrers/" in path and not (tree.layout.root / path.lstrip("/")).exists():
            return httpx.Response(200, headers={"Content-Type": "text/html"}, content=PAGE)
        if answer.status == 404:
            return httpx.Response(404, headers={"Content-Type": "text/html"}, content=PAGE)
        body = answer.body if answer.file is None else answer.file.read_bytes()
        headers = dict(answer.headers)  # HEAD: no Content-Length, as wrangler sends it
        return httpx.Response(
            200, headers=headers, content=body if request.method == "GET" else b""
        )

    report = check_url("http://h.example", tree.lock, transport=httpx.MockTransport(handler))
    joined = " ".join(f.problem for f in report.failures)
    assert "ping answered an HTML page (application/json), expected JSON" in joined
    assert "404 with an HTML page" in joined
    assert "referrers of an unknown digest served as text/html" in joined
    assert "referrers of an unknown digest: referrers document is not an OCI index" in joined
    assert "HEAD: Docker-Content-Digest without Content-Length" in joined
    assert "GET: Docker-Content-Digest without Content-Length" not in joined


def test_check_url_takes_an_empty_ping_and_refuses_a_non_json_one(tree: BuiltTree) -> None:
    """SeaweedFS keeps no body for the `v2/` key (no client reads the ping's body): an
    empty 200 passes; a body that is not a JSON object fails."""
    resolver = TreeResolver(tree.layout)

    def serving(ping: bytes) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            path = request.url.raw_path.decode()
            if path == "/v2/":
                return httpx.Response(
                    200, headers={"Content-Type": "application/json"}, content=ping
                )
            answer = resolver.answer(request.method, path, {})
            body = answer.body if answer.file is None else answer.file.read_bytes()
            return httpx.Response(
                answer.status,
                headers=dict(answer.headers),
                content=body if request.method == "GET" else b"",
            )

        return httpx.MockTransport(handler)

    empty = check_url("http://h.example", tree.lock, transport=serving(b""))
    assert not [f for f in empty.failures if f.path == "v2/"]
    for bad in (b"[]", b"ok"):
        report = check_url("http://h.example", tree.lock, transport=serving(bad))
        assert [f.path for f in report.failures if f.path == "v2/"] == ["v2/"], bad


def test_check_url_flags_a_mutable_path_cached_too_long(tree: BuiltTree) -> None:
    """Cache-Control per path kind: a tag, tag list, referrers document or ping kept past
    `tag_cache_seconds` (or immutable) fails; a host's own shorter caching or none passes."""
    resolver = TreeResolver(tree.layout)

    def serving(cache: dict[str, str | None]) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            answer = resolver.answer(request.method, request.url.raw_path.decode(), {})
            headers = dict(answer.headers)
            if headers.get("Cache-Control") != IMMUTABLE:  # the mutable kinds
                for section, value in cache.items():
                    path = request.url.path  # "/v2/" stands for the ping alone
                    if path == section or (section != "/v2/" and section in path):
                        headers.pop("Cache-Control", None)
                        if value is not None:
                            headers["Cache-Control"] = value
            body = answer.body if answer.file is None else answer.file.read_bytes()
            return httpx.Response(answer.status, headers=headers, content=body)

        return httpx.MockTransport(handler)

    too_long = {"/manifests/v1": IMMUTABLE, "/referrers/": "public, max-age=3600", "/v2/": None}
    report = check_url("http://h.example", tree.lock, transport=serving(too_long))
    by_path = {f.path: f.problem for f in report.failures}
    assert by_path["v2/app-oci/manifests/v1"] == (
        f"Cache-Control is {IMMUTABLE!r}, expected 'public, max-age=60': clients and caches "
        "would keep it past the next sync (set the host's caching from registrish's config)"
    )
    assert any("/referrers/" in p and "max-age=3600" in m for p, m in by_path.items())
    assert all("/manifests/sha256:" not in p for p in by_path)  # immutable there: right
    # the same tree under a longer tag_cache_seconds: max-age=3600 is within it
    longer = check_url(
        "http://h.example",
        tree.lock,
        transport=serving({"/referrers/": "public, max-age=3600"}),
        policy=Policy(tag_cache_seconds=3600),
    )
    assert longer.failures == []
    own = {"/manifests/": "public, max-age=0, must-revalidate", "/tags/": None, "/v2/": "no-cache"}
    assert check_url("http://h.example", tree.lock, transport=serving(own)).failures == []
