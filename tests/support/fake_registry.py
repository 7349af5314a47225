"""An in-process fake of a registry, its token service and a blob CDN, for
`httpx.MockTransport`: auth modes, pagination, ranges, redirects and fault injection.

Hosts: the registry at ``https://<host>``, the token service at ``https://auth.test/token``,
the CDN at ``https://cdn.test``. Every request is recorded in `requests` (with its headers),
so tests can count requests and check where ``Authorization`` went.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TOKEN_REALM = "https://auth.test/token"
CDN = "https://cdn.test"

#: A fault hook: return a response to answer with, or None to carry on normally.
Fault = Callable[[httpx.Request], "httpx.Response | None"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class _Token:
    scope: str
    user: str | None
    valid: bool = True


@dataclass
class FakeRegistry:
    host: str = "reg.test"
    #: "none", "bearer" or "basic".
    auth: str = "none"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret-pw"})
    #: Repositories only `users` may pull.
    private: set[str] = field(default_factory=set)
    token_ttl: int | None = 300
    #: Key of the token in the token response ("token" or "access_token").
    token_key: str = "token"
    page_size: int | None = None
    #: Blobs are answered with a 307 to the CDN (signed URL in the query string).
    redirect_blobs: bool = False
    ignore_range: bool = False
    send_digest_header: bool = True
    #: Answer the OCI 1.1 referrers API (`/v2/<repo>/referrers/<digest>`) instead of 404.
    referrers_api: bool = False
    #: With `referrers_api`: entries per referrers page (a `Link` header to the next one).
    referrers_page_size: int | None = None
    #: Called for every request first; may answer instead of the fake.
    fault: Fault | None = None
    scheme: str = "https"
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    tokens: dict[str, _Token] = field(default_factory=dict)

    # -- content ------------------------------------------------------------------------------
    def add_manifest(self, repo: str, tag: str, data: bytes, media_type: str = OCI_MANIFEST) -> str:
        digest = sha256(data)
        self.manifests[(repo, tag)] = (data, media_type)
        self.manifests[(repo, digest)] = (data, media_type)
        return digest

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def revoke_tokens(self) -> None:
        """Every issued token is now refused (expired server-side)."""
        for token in self.tokens.values():
            token.valid = False

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- counting -----------------------------------------------------------------------------
    def count(
        self, host: str | None = None, path_contains: str = "", method: str | None = None
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (host is None or r.url.host == host)
            and path_contains in r.url.path
            and (method is None or r.method == method)
        )

    # -- the handler --------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fault is not None:
            answer = self.fault(request)
            if answer is not None:
                return answer
        if request.url.host == "auth.test":
            return self._token(request)
        if request.url.host == "cdn.test":
            return self._blob(request, request.url.path.rsplit("/", 1)[-1])
        if request.url.host != self.host.split(":")[0]:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        path = request.url.path
        if not path.startswith("/v2/"):
            return httpx.Response(404)
        rest = path[len("/v2/") :]
        repo, kind, ref = _split(rest)
        denied = self._check_auth(request, repo)
        if denied is not None:
            return denied
        if rest == "":
            return httpx.Response(200, json={})
        if kind == "tags":
            return self._tags(request, repo)
        if kind == "manifests":
            return self._manifest(request, repo, ref)
        if kind == "referrers":
            return self._referrers(request, repo or "", ref)
        if kind == "blobs":
            if self.redirect_blobs:
                return httpx.Response(307, headers={"Location": f"{CDN}/b/{ref}?sig=SIGNED-SECRET"})
            return self._blob(request, ref)
        return httpx.Response(404)

    def _challenge(self, repo: str | None, error: str | None = None) -> httpx.Response:
        if self.auth == "basic":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        value = f'Bearer realm="{TOKEN_REALM}",service="{self.host}"'
        if repo:
            value += f',scope="repository:{repo}:pull"'
        if error:
            value += f',error="{error}"'
        return httpx.Response(401, headers={"WWW-Authenticate": value})

    def _check_auth(self, request: httpx.Request, repo: str | None) -> httpx.Response | None:
        if self.auth == "none":
            return None
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            user = self._basic_user(header)
            if user is None:
                return self._challenge(repo)
            return None
        if not header.startswith("Bearer "):
            return self._challenge(repo)
        token = self.tokens.get(header[len("Bearer ") :])
        if token is None or not token.valid:
            return self._challenge(repo, "invalid_token")
        if repo is not None:
            allowed = token.scope == f"repository:{repo}:pull" and (
                repo not in self.private or token.user is not None
            )
            if not allowed:
                return self._challenge(repo, "insufficient_scope")
        return None

    def _basic_user(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[len("Basic ") :]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _token(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        user = None
        if header:
            user = self._basic_user(header)
            if user is None:
                return httpx.Response(401, json={"details": "incorrect username or password"})
        if request.method == "POST":  # identity (refresh) token grant
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            if (
                form.get("grant_type") != "refresh_token"
                or form.get("refresh_token") != "refresh-1"
            ):
                return httpx.Response(401)
            user, scope = "alice", form.get("scope", "")
        else:
            scope = request.url.params.get("scope", "")
        value = secrets.token_hex(8)
        self.tokens[value] = _Token(scope=scope, user=user)
        doc: dict[str, object] = {self.token_key: value}
        if self.token_ttl is not None:
            doc["expires_in"] = self.token_ttl
        return httpx.Response(200, json=doc)

    def _tags(self, request: httpx.Request, repo: str | None) -> httpx.Response:
        tags = sorted({t for (r, t) in self.manifests if r == repo and not t.startswith("sha256:")})
        if not tags:
            return httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]})
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {}
        if self.page_size is not None and len(tags) > self.page_size:
            tags = tags[: self.page_size]
            headers["Link"] = (
                f'</v2/{repo}/tags/list?n={self.page_size}&last={tags[-1]}>; rel="next"'
            )
        return httpx.Response(200, json={"name": repo, "tags": tags}, headers=headers)

    def _manifest(self, request: httpx.Request, repo: str | None, ref: str) -> httpx.Response:
        found = self.manifests.get((repo or "", ref))
        if found is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        data, media_type = found
        headers = {"Content-Type": media_type, "Content-Length": str(len(data))}
        if self.send_digest_header:
            headers["Docker-Content-Digest"] = sha256(data)
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=data)

    def _referrers(self, request: httpx.Request, repo: str, subject: str) -> httpx.Response:
        """The referrers API, computed from the stored manifests' `subject` fields."""
        if not self.referrers_api:
            return httpx.Response(404, text="404 page not found\n")
        entries = []
        for (r, ref), (data, media_type) in sorted(self.manifests.items()):
            if r != repo or not ref.startswith("sha256:"):
                continue
            doc = json.loads(data)
            if (doc.get("subject") or {}).get("digest") != subject:
                continue
            entry = {"mediaType": media_type, "digest": ref, "size": len(data)}
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            if artifact_type:
                entry["artifactType"] = artifact_type
            entries.append(entry)
        start = int(request.url.params.get("page", "0"))
        headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
        if self.referrers_page_size is not None:
            end = start + self.referrers_page_size
            if end < len(entries):
                headers["Link"] = f'</v2/{repo}/referrers/{subject}?page={end}>; rel="next"'
            entries = entries[start:end]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return httpx.Response(200, headers=headers, content=json.dumps(body).encode())

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs.get(digest)
        if data is None:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
        range_header = request.headers.get("range")
        if range_header and not self.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return httpx.Response(416)
            return httpx.Response(
                206,
                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                content=data[start:],
            )
        return httpx.Response(200, content=data)


def _split(rest: str) -> tuple[str | None, str, str]:
    """``library/alpine/manifests/3.20`` → (``library/alpine``, ``manifests``, ``3.20``)."""
    for kind in ("manifests", "blobs", "referrers"):
        marker = f"/{kind}/"
        if marker in rest:
            repo, _, ref = rest.rpartition(marker)
            return repo, kind, ref
    if rest.endswith("/tags/list"):
        return rest[: -len("/tags/list")], "tags", ""
    return None, "", ""


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def manifest_doc(n: int = 0) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"n": n}, "layers": []}
    ).encode()
