"""The upstream side: a real CNCF distribution registry (the counting proxy: `testbed.proxy`).

``docker-registry`` (distribution 2.8) answers 404 for an OCI manifest requested without a
matching ``Accept`` and down-converts v2s2 to schema 1 when no ``Accept`` is sent: always send
:data:`MANIFEST_ACCEPT` (see :func:`get_manifest`).
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, Server, check_own_host, free_port, require_binary, run
from .proxy import (
    BodyFault,
    CountingProxy,
    Drip,
    Drop,
    Extra,
    FaultAction,
    FaultHook,
    Flip,
    Reset,
    Respond,
    Truncate,
    html_page,
    mangle,
    rate_limited,
    redirect,
)

# The proxy and its faults live in testbed.proxy; tests import them from here too.
__all__ = [
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "MANIFEST_ACCEPT",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BodyFault",
    "CountingProxy",
    "Drip",
    "Drop",
    "Extra",
    "FaultAction",
    "FaultHook",
    "Fetched",
    "Flip",
    "Registry",
    "Reset",
    "Respond",
    "Truncate",
    "get_manifest",
    "html_page",
    "mangle",
    "push_blob",
    "put_manifest",
    "rate_limited",
    "redirect",
    "request",
    "start_htpasswd_registry",
    "start_registry",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: Every manifest type we handle, most specific first; send it on every manifest request.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


@dataclass(frozen=True)
class Registry:
    """A running ``docker-registry``: ``host`` is ``127.0.0.1:PORT`` (no scheme)."""

    host: str
    url: str
    root: Path
    server: Server

    def ref(self, name: str, tag_or_digest: str) -> str:
        """``127.0.0.1:PORT/name:tag`` or ``…/name@sha256:…``."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{name}{sep}{tag_or_digest}"


def start_registry(
    tmp: Path, *, name: str = "docker-registry", timeout: float = 30.0, address: str = LOOPBACK
) -> Registry:
    """Start ``docker-registry serve`` with its own config under ``tmp``.

    Filesystem storage in ``tmp/storage``, deletes enabled, bound to ``address`` (127.0.0.1,
    or a veth end the caller created: see :func:`~testbed.procs.own_address`) on a free
    port (never the packaged ``/etc/docker/registry/config.yml``: htpasswd, all interfaces).
    The caller stops ``registry.server``.
    """
    check_own_host(address)
    binary = require_binary("docker-registry")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "config.yml"
    storage = tmp / "storage"
    # JSON is YAML: no quoting surprises with odd tmp paths.
    doc = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"{address}:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    config.write_text(json.dumps(doc, indent=2))
    url = f"http://{address}:{port}"
    server = Server(name, [binary, "serve", str(config)], log_dir=tmp, url=url).start()
    server.wait_http(f"{url}/v2/", status=200, timeout=timeout)
    return Registry(host=f"{address}:{port}", url=url, root=storage, server=server)


def start_htpasswd_registry(
    tmp: Path, storage: Path, *, user: str, password: str, timeout: float = 30.0
) -> Registry:
    """A ``docker-registry`` with htpasswd Basic auth serving ``storage`` (e.g. the seeded
    upstream's ``registry.root``, read-only in spirit: tests must not push to it).

    Needs ``htpasswd`` (apache2-utils) to hash the password. The caller stops
    ``registry.server``; ``/v2/`` answers 401 without credentials.
    """
    binary = require_binary("docker-registry")
    htpasswd = require_binary("htpasswd")
    tmp.mkdir(parents=True, exist_ok=True)
    users = tmp / "htpasswd"
    line = run([htpasswd, "-Bbn", user, password], what="htpasswd").stdout.strip()
    users.write_text(line + "\n")
    port = free_port()
    doc = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "auth": {"htpasswd": {"realm": "registrish-test", "path": str(users)}},
        "http": {"addr": f"{LOOPBACK}:{port}"},
    }
    config = tmp / "config.yml"
    config.write_text(json.dumps(doc, indent=2))
    url = f"http://{LOOPBACK}:{port}"
    server = Server("htpasswd-registry", [binary, "serve", str(config)], log_dir=tmp, url=url)
    server.start()
    server.wait_http(f"{url}/v2/", status=401, timeout=timeout)
    return Registry(host=f"{LOOPBACK}:{port}", url=url, root=storage, server=server)


# -- small HTTP helpers against a registry (loopback only) ------------------------------------
@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Fetched:
    """One HTTP request to ``base_url`` (``http://127.0.0.1:PORT``); header names lowercased."""
    hostport = base_url.removeprefix("http://").rstrip("/")
    host, _, port = hostport.partition(":")
    check_own_host(host)
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Fetched(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def get_manifest(base_url: str, name: str, reference: str, *, method: str = "GET") -> Fetched:
    """``GET``/``HEAD /v2/<name>/manifests/<reference>`` with the full ``Accept`` list."""
    return request(
        base_url, method, f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
    )


def put_manifest(base_url: str, name: str, reference: str, body: bytes, media_type: str) -> str:
    """``PUT`` a manifest as-is (byte-exact, so the digest is kept); returns its digest."""
    resp = request(
        base_url,
        "PUT",
        f"/v2/{name}/manifests/{reference}",
        headers={"Content-Type": media_type},
        body=body,
    )
    if resp.status != 201:
        raise RuntimeError(f"PUT manifest {name}:{reference} -> {resp.status}: {resp.body!r}")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_blob(base_url: str, name: str, data: bytes) -> dict[str, object]:
    """Upload ``data`` as a blob of ``name`` (``POST`` a session, then one ``PUT``) and
    return its descriptor fields ``{"digest": …, "size": …}``."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = request(base_url, "POST", f"/v2/{name}/blobs/uploads/")
    location = start.headers.get("location", "")
    if start.status != 202 or not location:
        raise RuntimeError(f"POST blob upload {name} -> {start.status}: {start.body!r}")
    path = "/" + location.split("://", 1)[-1].split("/", 1)[1] if "://" in location else location
    sep = "&" if "?" in path else "?"
    done = request(
        base_url,
        "PUT",
        f"{path}{sep}digest={digest}",
        headers={"Content-Type": "application/octet-stream"},
        body=data,
    )
    if done.status != 201:
        raise RuntimeError(f"PUT blob {name}@{digest} -> {done.status}: {done.body!r}")
    return {"digest": digest, "size": len(data)}
