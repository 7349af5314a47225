"""A private CA made with openssl, a server certificate for 127.0.0.1 and localhost, and
each pull client's way of trusting the CA (as the README's "Serving over HTTPS" says).

- skopeo, podman: ``--cert-dir DIR`` (every ``*.crt`` in it is a CA): :func:`cert_dir`.
- containerd (``ctr --hosts-dir``): ``DIR/HOST:PORT/hosts.toml`` naming the server and its
  ``ca``: :func:`containerd_hosts_dir`.
- the Docker engine: ``/etc/docker/certs.d/HOST:PORT/ca.crt`` (dockerd has no option for
  another directory): :func:`docker_certs_d`, removed afterwards. dockerd treats
  127.0.0.0/8 as an insecure registry and then skips verification; it does verify
  ``0.0.0.0:PORT``, which Linux delivers to a 127.0.0.1 listener (issue the certificate
  with ``IP:0.0.0.0`` too).
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, require_binary, run

DOCKER_CERTS_D = Path("/etc/docker/certs.d")


@dataclass(frozen=True)
class TestCA:
    cert: Path
    key: Path

    __test__ = False  # not a pytest class

    def context(self) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    run([require_binary("openssl"), *args], what="openssl")


def make_ca(directory: Path, name: str = "registrish test CA") -> TestCA:
    """A self-signed CA (EC P-256, one day) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA(directory / "ca.crt", directory / "ca.key")
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-days", "1", "-subj", f"/CN={name}", "-keyout", str(ca.key), "-out", str(ca.cert)),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return ca


def issue(ca: TestCA, directory: Path, *, sans: str = f"IP:{LOOPBACK},DNS:localhost") -> ServerCert:
    """A server certificate signed by `ca` for `sans`; its key is mode 0600, as the
    generated configs require."""
    directory.mkdir(parents=True, exist_ok=True)
    out = ServerCert(directory / "server.crt", directory / "server.key")
    csr, ext = directory / "server.csr", directory / "server.ext"
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
        *("-subj", "/CN=registrish test server", "-keyout", str(out.key), "-out", str(csr)),
    )
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key)),
        *("-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(out.cert)),
    )
    out.key.chmod(0o600)
    return out


def cert_dir(ca_cert: Path, directory: Path) -> Path:
    """skopeo's and podman's `--cert-dir`: a directory holding the CA as `ca.crt`."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, directory / "ca.crt")
    return directory


def containerd_hosts_dir(ca_cert: Path | None, directory: Path, host: str) -> Path:
    """`ctr --hosts-dir DIR`: `DIR/<host>/hosts.toml` sending `host` to https://`host`
    with `ca_cert` as its CA (None: the system's CAs only), in the README's form. Naming
    `server` matters: without it containerd talks plain HTTP to a loopback host; and
    containerd 1.6 refuses a file without a `[host."…"]` table ("invalid `host` tree")."""
    (directory / host).mkdir(parents=True, exist_ok=True)
    ca = f'  ca = "{ca_cert}"\n' if ca_cert is not None else ""
    (directory / host / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n[host."https://{host}"]\n'
        f'  capabilities = ["pull", "resolve"]\n{ca}'
    )
    return directory


@contextlib.contextmanager
def docker_certs_d(ca_cert: Path, host: str) -> Iterator[Path]:
    """`/etc/docker/certs.d/<host>/ca.crt` for the test's own `host` (a free port, so no one
    else's directory), removed afterwards. dockerd reads it at each pull."""
    target = DOCKER_CERTS_D / host
    if target.exists():
        raise FileExistsError(f"{target} exists: not ours to replace")
    made_certs_d = not DOCKER_CERTS_D.exists()
    target.mkdir(parents=True)
    try:
        shutil.copyfile(ca_cert, target / "ca.crt")
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        if made_certs_d:
            with contextlib.suppress(OSError):  # not empty: someone else's entry is there
                DOCKER_CERTS_D.rmdir()


@contextlib.contextmanager
def serve_https(cert: ServerCert) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 presenting `cert`, answering every GET with 200 `{}`
    (a registry's ping); yields its port, stopped afterwards."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
