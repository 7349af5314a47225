"""An upstream built like Docker Hub (testbed.md, "A Docker-Hub-like upstream").

- ``docker-registry`` 2.8 with ``auth: token``: RS256 JWTs from :class:`TokenServer`, a small
  token service here (the signing certificate in the ``x5c`` header, verified against the
  registry's ``rootcertbundle``); scopes are enforced by the registry, ``private`` repositories
  need a user's password, the rest are public.
- ``s3`` storage on SeaweedFS with redirects on: blob GETs answer 307 to a presigned URL on
  another origin, a :class:`~testbed.proxy.CountingProxy` in front of SeaweedFS (the
  ``regionendpoint``) that logs what reaches storage. The registry's own S3 calls go there
  too: a client's requests are the presigned ones (``X-Amz-Signature`` in the query).
- ``seeder``: a second ``docker-registry`` on the same bucket, without auth, so the push
  helpers of :mod:`testbed.images` need no tokens. Nothing reaches it but the seeding.

docker-registry must start without ``AWS_*`` in its environment (an inherited
``AWS_CA_BUNDLE`` makes its S3 client panic), and 2.8 forces path-style addressing when a
``regionendpoint`` is set, so SeaweedFS runs without ``-s3.domainName``.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .procs import LOOPBACK, Server, free_port, require_binary
from .proxy import CountingProxy
from .s3 import SeaweedS3, start_seaweedfs
from .upstream import Registry

SERVICE = "registrish-hub"
ISSUER = "registrish-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A token service (``GET /token?service=…&scope=…``, optional Basic auth) issuing RS256
    JWTs for ``pull``; every request is recorded with its headers (``requests``)."""

    tmp: Path
    users: dict[str, str] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    ttl: int = 300
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registrish test tokens")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.tmp / "token-cert.pem"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._lock = threading.Lock()
        self._httpd = _TokenHTTPServer((LOOPBACK, 0), _TokenHandler)
        self._httpd.tokens = self
        self.url = f"http://{LOOPBACK}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def record(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def user_of(self, authorization: str | None) -> str | bool | None:
        """The user a Basic header names (None: anonymous; False: a wrong password)."""
        if not authorization:
            return None
        if not authorization.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user if self.users.get(user) == password else False

    def token(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = kind == "repository" and (name not in self.private or user is not None)
            if allowed and "pull" in actions.split(","):
                access.append({"type": "repository", "name": name, "actions": ["pull"]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + self.ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


class _TokenHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tokens: TokenServer


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TokenHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # `requests` is the log

    def do_GET(self) -> None:
        tokens = self.server.tokens
        tokens.record("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        user = tokens.user_of(self.headers.get("Authorization"))
        if url.path != "/token" or query.get("service") != [SERVICE]:
            self._answer(404, {"details": "no such token service"})
        elif user is False:
            self._answer(401, {"details": "incorrect username or password"})
        else:
            scopes = [s for value in query.get("scope", []) for s in value.split(" ")]
            value = tokens.token(user if isinstance(user, str) else None, scopes)
            self._answer(200, {"token": value, "access_token": value, "expires_in": tokens.ttl})

    def _answer(self, status: int, doc: dict[str, object]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Hub:
    registry: Registry
    tokens: TokenServer
    #: In front of SeaweedFS: every request that reached storage.
    storage: CountingProxy
    s3: SeaweedS3
    seeder: Registry

    def stop(self) -> None:
        for server in (self.registry.server, self.seeder.server):
            server.stop()
        self.storage.stop()
        self.tokens.stop()
        self.s3.stop()


class _Stoppable(Protocol):
    def stop(self) -> object: ...


def _start_registry(
    name: str, tmp: Path, storage: dict[str, object], auth: dict[str, object] | None
) -> Registry:
    binary = require_binary("docker-registry")
    port = free_port()
    doc: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"s3": storage, "delete": {"enabled": True}},
        "http": {"addr": f"{LOOPBACK}:{port}"},
    }
    if auth is not None:
        doc["auth"] = auth
    config = tmp / f"{name}.yml"
    config.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    url = f"http://{LOOPBACK}:{port}"
    no_aws = {k: "" for k in os.environ if k.startswith("AWS_")}  # empty is unset to its SDK
    server = Server(name, [binary, "serve", str(config)], log_dir=tmp, url=url, env=no_aws)
    server.start().wait_http(f"{url}/v2/", status=200 if auth is None else 401, timeout=60)
    return Registry(host=f"{LOOPBACK}:{port}", url=url, root=tmp, server=server)


def start_hub(tmp: Path, *, users: dict[str, str], private: set[str]) -> Hub:
    """Start SeaweedFS, the storage proxy, the token server, the seeder and the registry.
    The caller seeds through ``hub.seeder`` and stops everything with ``hub.stop()``."""
    s3 = start_seaweedfs(tmp / "s3", public_read=False, virtual_hosted=False)
    started: list[_Stoppable] = [s3]
    try:
        storage = CountingProxy(s3.url).start()
        started.append(storage)
        tokens = TokenServer(tmp / "tokens", users=users, private=private).start()
        started.append(tokens)

        def s3_settings(endpoint: str) -> dict[str, object]:
            return {
                "region": "us-east-1",
                "regionendpoint": endpoint,
                "bucket": s3.bucket,
                "accesskey": s3.access_key,
                "secretkey": s3.secret_key,
                "secure": False,
                "v4auth": True,
            }

        seeder = _start_registry("seeder", tmp, s3_settings(s3.url), None)
        started.append(seeder.server)
        token_auth: dict[str, object] = {
            "token": {
                "realm": f"{tokens.url}/token",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(tokens.cert_path),
            }
        }
        registry = _start_registry("hub-registry", tmp, s3_settings(storage.url), token_auth)
    except BaseException:
        for part in reversed(started):
            part.stop()
        raise
    return Hub(registry=registry, tokens=tokens, storage=storage, s3=s3, seeder=seeder)
