"""The test bed itself works: upstream seeded, proxy counts, hosts serve, clients pull.

The client smoke tests pull straight from the ``docker-registry`` upstream, which proves the
clients work here before the product exists.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from testbed.clients import (
    Containerd,
    Dockerd,
    ctr_pull,
    docker_pull,
    docker_run,
    podman_pull,
    skopeo_copy,
)
from testbed.images import (
    DEFAULT_OUTPUT,
    MANY_TAGS,
    SeededUpstream,
    describe,
    push_random_image,
    retag,
)
from testbed.procs import (
    CommandError,
    Server,
    ServerError,
    ServerGroup,
    free_port,
    http_status,
    require_binary,
    run,
)
from testbed.statichosts import (
    start_apache,
    start_caddy,
    start_nginx,
    start_python_http_server,
    write_minimal_apache_config,
    write_minimal_caddy_config,
    write_minimal_nginx_config,
)
from testbed.upstream import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    CountingProxy,
    Drop,
    Registry,
    Respond,
    get_manifest,
    request,
)
from testbed.vendorhosts import require_npm_bin

EXPECTED_TYPES = {
    "app-oci:v1": OCI_MANIFEST,
    "app-docker:v1": DOCKER_MANIFEST,
    "multi:v1": OCI_INDEX,
    "multi-docker:v1": DOCKER_LIST,
    "team/tools/app:v1": OCI_MANIFEST,
}


# -- procs ----------------------------------------------------------------------------------
def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    # The port must really be free for a listener on loopback, the way the servers bind it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert sock.getsockname()[1] == port


def test_server_failure_reports_log_tail(tmp_path: Path) -> None:
    server = Server("boom", ["sh", "-c", "echo it broke >&2; exit 3"], log_dir=tmp_path).start()
    with pytest.raises(ServerError, match=r"(?s)exited with code 3.*it broke"):
        server.wait_http(f"http://127.0.0.1:{free_port()}/", timeout=5)


def test_server_stop_kills_the_group(tmp_path: Path) -> None:
    # a shell that ignores TERM and has a child: stop() must still end both
    script = "trap '' TERM; sleep 300 & sleep 300"
    server = Server("stubborn", ["sh", "-c", script], log_dir=tmp_path).start()
    assert server.running
    server.stop(timeout=1)
    assert not server.running


# -- upstream -------------------------------------------------------------------------------
def test_registry_ping(upstream_registry: Registry) -> None:
    resp = request(upstream_registry.url, "GET", "/v2/")
    assert resp.status == 200
    assert resp.headers["docker-distribution-api-version"] == "registry/2.0"


def test_seeded_refs(seeded_upstream: SeededUpstream) -> None:
    url = seeded_upstream.url
    for key, media_type in EXPECTED_TYPES.items():
        ref = seeded_upstream[key]
        assert ref.media_type == media_type, key
        head = get_manifest(url, ref.name, ref.tag, method="HEAD")
        assert head.status == 200, key
        assert head.content_type == media_type, key
        assert head.headers["docker-content-digest"] == ref.digest, key
        by_digest = get_manifest(url, ref.name, ref.digest)
        assert by_digest.status == 200
        assert by_digest.digest == ref.digest
    for key in ("multi:v1", "multi-docker:v1"):
        assert set(seeded_upstream[key].platforms) == {"linux/amd64", "linux/arm64"}
    app = seeded_upstream["app-oci:v1"]
    assert len(app.layers) >= 2
    assert seeded_upstream["app-docker:v1"].digest != app.digest
    assert seeded_upstream["team/tools/app:v1"].digest == app.digest
    # the OCI index's amd64 child is the app-oci image itself
    assert seeded_upstream["multi:v1"].platforms["linux/amd64"] == app.digest
    many = {seeded_upstream.get("many", t).digest for t in MANY_TAGS}
    assert many == {app.digest}
    tags = json.loads(request(url, "GET", "/v2/many/tags/list").body)["tags"]
    assert sorted(tags) == sorted(MANY_TAGS)


def test_push_random_image_and_move_tag(upstream_registry: Registry, tmp_path: Path) -> None:
    first = push_random_image(
        upstream_registry, "rnd/one", "t", [1000, 70_000], seed=1, workdir=tmp_path
    )
    assert first.media_type == OCI_MANIFEST
    assert len(first.layers) == 2
    again = push_random_image(
        upstream_registry, "rnd/one", "t2", [1000, 70_000], seed=1, workdir=tmp_path
    )
    assert again.digest == first.digest  # deterministic
    moved = push_random_image(
        upstream_registry, "rnd/one", "t", [500], seed=2, gzip_layers=True, workdir=tmp_path
    )
    assert moved.digest != first.digest
    assert describe(upstream_registry, "rnd/one", "t").digest == moved.digest
    blob = request(upstream_registry.url, "GET", f"/v2/rnd/one/blobs/{moved.layers[0]}")
    assert blob.status == 200
    assert blob.digest == moved.layers[0]
    assert retag(upstream_registry, "rnd/one", "t2", "t") == first.digest
    v2s2 = push_random_image(
        upstream_registry, "rnd/two", "t", [10], seed=3, workdir=tmp_path, v2s2=True
    )
    assert v2s2.media_type == DOCKER_MANIFEST


# -- CountingProxy --------------------------------------------------------------------------
def test_counting_proxy_counts_and_preserves(
    seeded_upstream: SeededUpstream, counting_proxy: CountingProxy
) -> None:
    ref = seeded_upstream["multi:v1"]
    head = get_manifest(counting_proxy.url, ref.name, ref.tag, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.content_type == OCI_INDEX
    assert head.headers["docker-content-digest"] == ref.digest
    assert int(head.headers["content-length"]) == ref.size
    got = get_manifest(counting_proxy.url, ref.name, ref.tag)
    assert got.digest == ref.digest
    layer = seeded_upstream["app-oci:v1"].layers[0]
    blob = request(counting_proxy.url, "GET", f"/v2/app-oci/blobs/{layer}")
    assert blob.status == 200
    assert blob.digest == layer
    missing = request(counting_proxy.url, "GET", "/v2/app-oci/manifests/nope")
    assert missing.status == 404
    assert counting_proxy.count() == 4
    assert counting_proxy.count("HEAD") == 1
    assert counting_proxy.count("GET", "/manifests/") == 2
    assert counting_proxy.count(path_contains="/blobs/") == 1
    assert counting_proxy.requests[0] == ("HEAD", "/v2/multi/manifests/v1")
    counting_proxy.reset()
    assert counting_proxy.requests == []


def test_counting_proxy_concurrent_and_faults(
    seeded_upstream: SeededUpstream, counting_proxy: CountingProxy
) -> None:
    layer = seeded_upstream["app-oci:v1"].layers[0]
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            assert request(counting_proxy.url, "GET", f"/v2/app-oci/blobs/{layer}").digest == layer
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counting_proxy.count("GET", layer) == 8

    counting_proxy.fault = lambda _m, p: Respond(503) if "/manifests/" in p else None
    assert request(counting_proxy.url, "GET", "/v2/app-oci/manifests/v1").status == 503
    counting_proxy.fault = lambda _m, _p: Drop()
    with pytest.raises(OSError):
        request(counting_proxy.url, "GET", "/v2/")
    counting_proxy.fault = None
    assert request(counting_proxy.url, "GET", "/v2/").status == 200


def test_push_through_counting_proxy(
    seeded_upstream: SeededUpstream, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    """skopeo pushes via the proxy (POST/PATCH/PUT with Location pointing back at it)."""
    out = tmp_path / "out"
    skopeo_copy(f"{seeded_upstream.host}/app-oci:v1", out)
    run(
        [
            require_binary("skopeo"),
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"dir:{out}",
            f"docker://{counting_proxy.host}/via-proxy/app:v1",
        ]
    )
    assert counting_proxy.count("PUT", "/manifests/v1") == 1
    got = get_manifest(seeded_upstream.url, "via-proxy/app", "v1")
    assert got.digest == seeded_upstream["app-oci:v1"].digest


# -- static hosts ---------------------------------------------------------------------------
@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "v2").mkdir(parents=True)
    (root / "v2" / "hello.txt").write_text("hello static\n")
    return root


def _assert_serves(url: str) -> None:
    resp = request(url, "GET", "/v2/hello.txt")
    assert resp.status == 200
    assert resp.body == b"hello static\n"
    assert resp.content_type.startswith("text/plain")
    assert request(url, "GET", "/v2/missing").status == 404


def test_nginx_serves(docroot: Path, tmp_path: Path, servers: ServerGroup) -> None:
    port = free_port()
    conf = write_minimal_nginx_config(tmp_path / "nginx", docroot, port)
    server = servers.add(start_nginx(conf, port=port))
    assert server.url is not None
    _assert_serves(server.url)


def test_caddy_serves(docroot: Path, tmp_path: Path, servers: ServerGroup) -> None:
    port = free_port()
    conf = write_minimal_caddy_config(tmp_path / "caddy", docroot, port)
    server = servers.add(start_caddy(conf, port=port))
    assert server.url is not None
    _assert_serves(server.url)


def test_apache_serves(docroot: Path, tmp_path: Path, servers: ServerGroup) -> None:
    port = free_port()
    conf = write_minimal_apache_config(tmp_path / "apache", docroot, port)
    server = servers.add(start_apache(conf, port=port))
    assert server.url is not None
    _assert_serves(server.url)
    server.stop()
    with pytest.raises(OSError):
        http_status(server.url + "/v2/hello.txt")  # the forked workers are gone too


def test_python_http_server_serves(docroot: Path, tmp_path: Path, servers: ServerGroup) -> None:
    port = free_port()
    server = servers.add(start_python_http_server(docroot, port=port, log_dir=tmp_path))
    assert server.url is not None
    _assert_serves(server.url)


# -- pull clients, straight from the upstream -----------------------------------------------
SMOKE_KEYS = ["app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1"]


@pytest.mark.slow
@pytest.mark.parametrize("key", SMOKE_KEYS)
def test_skopeo_pulls_upstream(seeded_upstream: SeededUpstream, tmp_path: Path, key: str) -> None:
    ref = seeded_upstream[key]
    everything = skopeo_copy(ref.ref, tmp_path / "all", all_platforms=True)
    assert everything.digest == ref.digest
    assert set(everything.instances) == set(ref.platforms.values())
    one = skopeo_copy(ref.ref, tmp_path / "one")
    expected = ref.platforms.get("linux/amd64", ref.digest)
    assert one.digest == expected
    arm = skopeo_copy(ref.ref, tmp_path / "arm", arch="arm64")
    assert arm.digest == ref.platforms.get("linux/arm64", ref.digest)
    by_digest = skopeo_copy(ref.digest_ref, tmp_path / "bydigest", all_platforms=True)
    assert by_digest.digest == ref.digest


@pytest.mark.slow
def test_skopeo_oci_layout_readback(seeded_upstream: SeededUpstream, tmp_path: Path) -> None:
    ref = seeded_upstream["app-oci:v1"]
    assert skopeo_copy(ref.ref, tmp_path / "oci", transport="oci").digest == ref.digest


@pytest.mark.slow
def test_skopeo_failure_carries_stderr(upstream_registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="manifest unknown"):
        skopeo_copy(f"{upstream_registry.host}/app-oci:does-not-exist", tmp_path / "x")


@pytest.mark.slow
@pytest.mark.parametrize("key", SMOKE_KEYS)
def test_podman_pulls_upstream(seeded_upstream: SeededUpstream, tmp_path: Path, key: str) -> None:
    ref = seeded_upstream[key]
    result = podman_pull(ref.ref, tmp_path)
    assert result.digest == ref.digest
    assert ref.digest_ref.replace(":v1", "") in result.repo_digests or any(
        d.endswith(ref.digest) for d in result.repo_digests
    )


@pytest.mark.slow
@pytest.mark.parametrize("key", SMOKE_KEYS)
def test_ctr_pulls_upstream(
    seeded_upstream: SeededUpstream, containerd: Containerd, key: str
) -> None:
    ref = seeded_upstream[key]
    result = ctr_pull(containerd, ref.ref)
    assert result.digest == ref.digest
    assert result.media_type == ref.media_type
    assert "complete" in result.check
    by_digest = ctr_pull(containerd, ref.digest_ref)
    assert by_digest.digest == ref.digest


@pytest.mark.slow
def test_ctr_pulls_other_platform_and_fetches_per_namespace(
    seeded_upstream: SeededUpstream, containerd: Containerd, counting_proxy: CountingProxy
) -> None:
    ref = seeded_upstream["multi:v1"]
    via_proxy = f"{counting_proxy.host}/{ref.name}:{ref.tag}"
    assert ctr_pull(containerd, via_proxy, platform="linux/arm64").digest == ref.digest
    first = counting_proxy.count("GET", "/blobs/")
    assert first >= 2
    assert counting_proxy.count(path_contains="/v2/multi/manifests/v1") >= 1
    containerd.pull(via_proxy, platform="linux/arm64")
    # isolated content: the second namespace fetched its blobs again
    assert counting_proxy.count("GET", "/blobs/") == 2 * first


@pytest.mark.slow
@pytest.mark.parametrize("key", SMOKE_KEYS)
def test_docker_pulls_upstream(seeded_upstream: SeededUpstream, dockerd: Dockerd, key: str) -> None:
    ref = seeded_upstream[key]
    result = docker_pull(dockerd, ref.ref)
    assert result.digest == ref.digest
    by_digest = docker_pull(dockerd, ref.digest_ref)
    assert by_digest.digest == ref.digest


@pytest.mark.slow
def test_docker_runs_pulled_image(seeded_upstream: SeededUpstream, dockerd: Dockerd) -> None:
    ref = seeded_upstream["multi-docker:v1"]
    assert dockerd.pull(ref.ref).digest == ref.digest
    assert dockerd.run(ref.ref).strip() == DEFAULT_OUTPUT
    assert docker_run(dockerd, ref.ref, "echo", "hello", "there").strip() == "hello there"


@pytest.mark.slow
def test_seaweedfs_serves_bucket_at_root(tmp_path: Path) -> None:
    from testbed.s3 import require_boto3, start_seaweedfs

    boto3 = require_boto3()

    s3 = start_seaweedfs(tmp_path / "s3")
    try:
        client = boto3.client(
            "s3",
            endpoint_url=s3.api_url,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            region_name="us-east-1",
            config=boto3.session.Config(s3={"addressing_style": "path"}),
        )
        client.put_object(Bucket=s3.bucket, Key="v2/", Body=b"{}", ContentType="application/json")
        client.put_object(
            Bucket=s3.bucket, Key="v2/x/manifests/v1", Body=b"{}", ContentType=OCI_MANIFEST
        )
        ping = request(s3.url, "GET", "/v2/")
        assert ping.status == 200  # (SeaweedFS keeps "v2/" as a directory: empty body)
        manifest = request(s3.url, "HEAD", "/v2/x/manifests/v1")
        assert manifest.status == 200
        assert manifest.content_type == OCI_MANIFEST
        assert request(s3.url, "GET", "/v2/x/manifests/missing").status == 404
    finally:
        s3.stop()


def test_a_missing_npm_tool_fails_in_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRISH_NPM_PREFIX", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"wrangler@4\.86\.0 is not installed"):
        require_npm_bin("wrangler")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="netlify-cli"):
        require_npm_bin("netlify-cli")
