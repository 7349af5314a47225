"""End to end over HTTPS: one tree locked and synced from the seeded upstream, served by
nginx, Caddy (our certificate, and automatic HTTPS with its local CA standing in for ACME)
and Apache on the configs `registrish hosts` generated with `[registry] tls_certificate`,
`tls_key` (or `server_name`) and `redirect_http`. skopeo, podman, containerd and the Docker
engine pull every manifest kind, each trusting the CA as the README says; a client that
does not trust it fails, and `registrish check` names the untrusted certificate."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from testbed.images import SeededUpstream
from testbed.procs import LOOPBACK, CommandError, Server, free_port
from testbed.registrish import registrish
from testbed.statichosts import start_caddy, start_generated
from testbed.tls import (
    TestCA,
    cert_dir,
    containerd_hosts_dir,
    docker_certs_d,
    issue,
    make_ca,
)

from registrish_lock.lock.lockfile import read_lock
from registrish_lock.serving.check import check_url
from registrish_lock.tls import CertificateError

pytestmark = pytest.mark.slow

KINDS = ("app-oci", "app-docker", "multi", "multi-docker")
CLIENTS = ("skopeo", "podman", "containerd", "docker")
#: "caddy-auto": `server_name` and no certificate, Caddy's automatic HTTPS; for a loopback
#: name Caddy issues from its local CA (`tls internal`) instead of asking an ACME CA.
SERVERS = ("nginx", "caddy", "apache", "caddy-auto")
#: dockerd never verifies a registry in 127.0.0.0/8 (its built-in insecure range). On Linux a
#: connection to 0.0.0.0 reaches the same 127.0.0.1 listener, and dockerd does verify it
#: (with /etc/docker/certs.d/0.0.0.0:PORT/ca.crt): the docker tests pull from there, from
#: every server with our certificate (which lists IP:0.0.0.0 too).
DOCKER_VERIFIED = "0.0.0.0"


@dataclass(frozen=True)
class Project:
    dir: Path
    ca: TestCA


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, seeded_upstream: SeededUpstream) -> Project:
    """`registrish.toml` over the four kinds, locked and synced once; a private CA and a
    server certificate for 127.0.0.1 and localhost under `pki/`."""
    base = tmp_path_factory.mktemp("https")
    ca = make_ca(base / "ca")
    issue(ca, base / "pki", sans=f"IP:{LOOPBACK},DNS:localhost,IP:{DOCKER_VERIFIED}")
    images = "".join(
        f'[[image]]\nsource = "{seeded_upstream.host}/{k}"\ntags = ["v1"]\n\n' for k in KINDS
    )
    (base / "images.toml").write_text(
        f'{images}[registries."{seeded_upstream.host}"]\ninsecure = true\n'
    )
    config = base / "registrish.toml"
    config.write_text('[registry]\nhosts = ["plain"]\n\n' + (base / "images.toml").read_text())
    registrish(config, "lock")
    registrish(config, "sync")
    return Project(base, ca)


@dataclass(frozen=True)
class HttpsServer:
    kind: str
    port: int
    redirect_port: int
    config: Path
    #: The CA certificate clients must trust: ours, or Caddy's local root.
    ca: Path
    #: skopeo's and podman's `--cert-dir`, containerd's `--hosts-dir`.
    cert_dir: Path
    hosts_dir: Path

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def docker_host(self) -> str:
        """Where dockerd verifies the certificate; Caddy's local CA only certifies
        127.0.0.1, where dockerd pulls over HTTPS without verifying."""
        address = LOOPBACK if self.kind == "caddy-auto" else DOCKER_VERIFIED
        return f"{address}:{self.port}"


def _write_config(project: Project, kind: str, port: int, redirect_port: int) -> Path:
    """`<kind>.toml`: the project's images served on 127.0.0.1:`port` over HTTPS, with the
    project's lock as `<kind>.lock` (the lock depends on the images only)."""
    if kind == "caddy-auto":
        tls = f'server_name = "{LOOPBACK}"\n'
    else:
        tls = 'tls_certificate = "pki/server.crt"\ntls_key = "pki/server.key"\n'
    host = kind.removesuffix("-auto")
    config = project.dir / f"{kind}.toml"
    config.write_text(
        f'[registry]\nhosts = ["{host}"]\nhosts_dir = "hosts-{kind}"\n'
        f'listen = "{LOOPBACK}:{port}"\nredirect_http = "{LOOPBACK}:{redirect_port}"\n{tls}\n'
        + (project.dir / "images.toml").read_text()
    )
    shutil.copyfile(project.dir / "registrish.lock", config.with_suffix(".lock"))
    return config


def _caddy_local_root(server: Server, state: Path, port: int) -> Path:
    """Caddy's local CA root (written while it provisions), once Caddy serves /v2/ with a
    certificate that chains to it (issued in the background after start)."""
    root = state / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    deadline = time.monotonic() + 30
    while not root.exists():
        if time.monotonic() > deadline or not server.running:
            raise server.fail(f"no {root}")
        time.sleep(0.05)
    context = ssl.create_default_context(cafile=str(root))
    server.wait_http(f"https://{LOOPBACK}:{port}/v2/", status=200, context=context)
    return root


@pytest.fixture(scope="module", params=SERVERS)
def https_server(
    request: pytest.FixtureRequest, project: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpsServer]:
    kind: str = request.param
    port, redirect_port = free_port(), free_port()
    config = _write_config(project, kind, port, redirect_port)
    registrish(config, "hosts")
    hosts = project.dir / f"hosts-{kind}"
    tmp = tmp_path_factory.mktemp(kind)
    if kind == "caddy-auto":
        # A plain probe of the HTTPS port gets a 400: Caddy is listening.
        server = start_caddy(hosts / "Caddyfile", port=port, ready_path="/v2/")
    else:
        server = start_generated(kind, hosts, tmp, port=port, context=project.ca.context())
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        ca = project.ca.cert
        if kind == "caddy-auto":
            ca = _caddy_local_root(server, hosts / "caddy-state", port)
        host = f"{LOOPBACK}:{port}"
        yield HttpsServer(
            kind,
            port,
            redirect_port,
            config,
            ca,
            cert_dir(ca, tmp / "certs"),
            containerd_hosts_dir(ca, tmp / "ctr-hosts", host),
        )


def _pull(client: str, ref: str, server: HttpsServer, request: pytest.FixtureRequest) -> str:
    """The root digest `client` pulled `ref` as, trusting the server's CA."""
    tmp = Path(request.getfixturevalue("tmp_path"))
    if client == "skopeo":
        return skopeo_copy(ref, tmp / "out", all_platforms=True, cert_dir=server.cert_dir).digest
    if client == "podman":
        return podman_pull(ref, tmp, cert_dir=server.cert_dir).digest
    if client == "containerd":
        containerd: Containerd = request.getfixturevalue("containerd")
        return ctr_pull(containerd, ref, hosts_dir=server.hosts_dir).digest
    dockerd: Dockerd = request.getfixturevalue("dockerd")
    with docker_certs_d(server.ca, server.docker_host):
        return docker_pull(dockerd, ref.replace(server.host, server.docker_host)).digest


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("client", CLIENTS)
def test_client_pulls_every_kind_over_https(
    https_server: HttpsServer,
    client: str,
    kind: str,
    seeded_upstream: SeededUpstream,
    request: pytest.FixtureRequest,
) -> None:
    ref = f"{https_server.host}/{kind}:v1"
    assert _pull(client, ref, https_server, request) == seeded_upstream.get(kind, "v1").digest


def test_docker_runs_the_image(https_server: HttpsServer, dockerd: Dockerd) -> None:
    with docker_certs_d(https_server.ca, https_server.docker_host):
        out = docker_run(dockerd, f"{https_server.docker_host}/app-docker:v1", "echo", "hello")
    assert out == "hello\n"


def test_clients_that_do_not_trust_the_ca_fail(
    https_server: HttpsServer, containerd: Containerd, dockerd: Dockerd, tmp_path: Path
) -> None:
    """Verification on, without the CA: skopeo and podman (an empty `--cert-dir`),
    containerd (a hosts.toml naming no `ca`) and dockerd (no certs.d entry; where it
    verifies) refuse the certificate."""
    ref = f"{https_server.host}/app-oci:v1"
    cert_dir_without_ca = tmp_path / "no-ca"
    cert_dir_without_ca.mkdir()
    failures = []
    with pytest.raises(CommandError) as skopeo:
        skopeo_copy(ref, tmp_path / "out", cert_dir=cert_dir_without_ca)
    failures.append(skopeo.value.stderr)
    with pytest.raises(CommandError) as podman:
        podman_pull(ref, tmp_path, cert_dir=cert_dir_without_ca)
    failures.append(podman.value.stderr)
    hosts = containerd_hosts_dir(None, tmp_path / "ctr-hosts", https_server.host)
    with pytest.raises(CommandError) as ctr:
        ctr_pull(containerd, ref, hosts_dir=hosts)
    failures.append(ctr.value.stderr)
    if https_server.kind != "caddy-auto":
        with pytest.raises(CommandError) as docker:
            docker_pull(dockerd, f"{https_server.docker_host}/app-oci:v1")
        failures.append(docker.value.stderr)
    for stderr in failures:
        assert "certificate signed by unknown authority" in stderr, stderr


def test_check_trusts_ssl_cert_file_and_names_an_untrusted_certificate(
    https_server: HttpsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"https://{https_server.host}"
    lock = read_lock(https_server.config.with_suffix(".lock"))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(CertificateError) as untrusted:
        check_url(url, lock)
    assert "the TLS certificate is not trusted" in untrusted.value.message
    monkeypatch.setenv("SSL_CERT_FILE", str(https_server.ca))
    report = check_url(url, lock, deep=True)
    assert report.failures == []
    assert report.checked > 20


def test_plain_http_is_redirected_to_https(https_server: HttpsServer) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, https_server.redirect_port, timeout=10)
    try:
        conn.request("GET", "/v2/app-oci/manifests/v1")
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 308
    assert resp.getheader("Location") == f"https://{https_server.host}/v2/app-oci/manifests/v1"


def _handshake(server: HttpsServer, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection((LOOPBACK, server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname=LOOPBACK)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_only_tls_1_2_and_up_with_strong_ciphers(https_server: HttpsServer) -> None:
    good = ssl.create_default_context(cafile=str(https_server.ca))
    good.set_alpn_protocols(["h2", "http/1.1"])
    with _handshake(https_server, good) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        # HTTP/2 where the server has it (the test bed's Apache loads no mod_http2)
        alpn = tls.selected_alpn_protocol()
        assert alpn == ("http/1.1" if https_server.kind == "apache" else "h2")
    for version, ciphers in (
        (ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),  # an old protocol
        (ssl.TLSVersion.TLSv1_2, "AES128-SHA:@SECLEVEL=0"),  # no forward secrecy, CBC
    ):
        weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        weak.load_verify_locations(cafile=str(https_server.ca))
        weak.minimum_version = ssl.TLSVersion.TLSv1
        weak.maximum_version = version
        weak.set_ciphers(ciphers)
        with pytest.raises(ssl.SSLError) as refused:
            _handshake(https_server, weak).close()
        # the server's alert, not our own library declining to offer it
        assert "ALERT" in refused.value.reason, (version, refused.value.reason)


def test_cli_check_exit_codes(https_server: HttpsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"https://{https_server.host}"
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    proc = registrish(https_server.config, "check", url, check=False)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {url}/v2/: the TLS certificate is not trusted")
    assert lines[1].startswith("hint: ") and len(lines) == 2
    monkeypatch.setenv("SSL_CERT_FILE", str(https_server.ca))
    proc = registrish(https_server.config, "check", url, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
