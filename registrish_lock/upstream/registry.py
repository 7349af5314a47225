"""The upstream registry client: the only module that talks HTTP to registries.

One shared `httpx.Client` (connection reuse, safe from a thread pool), a semaphore per
endpoint host bounding concurrency, bounded retries with exponential backoff and
``Retry-After``, redirects followed by hand so ``Authorization`` only ever goes to the
registry's own origin, and Docker Hub mirrors tried before Docker Hub itself.

Bodies stream: manifests are read up to a cap, blobs go straight to disk while hashed and
are verified before the caller sees them. Only token responses are buffered (`auth`).
Every request is logged at ``-v`` as ``GET https://host/v2/... -> 200 (0.12 s)``, without
headers or query strings (signed CDN URLs carry secrets there).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpcore
import httpx

from .. import USER_AGENT
from ..console import Console
from ..errors import IntegrityError, NotFoundError, RegistrishError, UpstreamError
from ..fsutil import FileStamp, VerifiedFile
from ..lock.config import RegistrySettings
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, Descriptor, parse_manifest, sha256_digest
from ..oci.reference import (
    DOCKER_HUB,
    Reference,
    is_digest,
    is_tag,
    validate_digest,
    validate_name,
    validate_tag,
)
from .auth import MAX_TOKEN_RESPONSE, Authenticator, RequestAuth
from .credentials import CredentialStore
from .protocols import DEFAULT_JOBS, FetchedManifest, ManifestInfo
from .ratelimit import DEFAULT_RETRY, RateLimits, exhausted
from .ratelimit import RetryPolicy as RetryPolicy
from .ratelimit import backoff_delay as backoff_delay
from .ratelimit import parse_retry_after as parse_retry_after

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
#: A tag-list page; Docker Hub's biggest repositories stay far below this.
MAX_TAGS_PAGE = 16 * 1024 * 1024
MAX_TAG_PAGES = 10_000
_MAX_ERROR_BODY = 64 * 1024
_CHUNK = 256 * 1024
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;(?:[^,]*;)?\s*rel="?next"?', re.IGNORECASE)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Socket read size for HTTP/1.1 bodies. httpcore reads 64 KiB at a time, and the Python
#: work per read (h11 events, buffer copies) capped a cold sync at ~240 MiB/s over loopback
#: (issue 6); 1 MiB reads measured 2x that (256 KiB and 4 MiB: 1.5x). recv() returns what
#: has arrived, so small responses are unaffected; each connection buffers at most this.
SOCKET_READ_BYTES = 1 << 20
if getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", SOCKET_READ_BYTES) < SOCKET_READ_BYTES:
    httpcore.HTTP11Connection.READ_NUM_BYTES = SOCKET_READ_BYTES


#: Mirrors get few attempts: Docker Hub is the fallback, not a failure.
_MIRROR_POLICY = RetryPolicy(attempts=2, base_delay=0.2, max_delay=2.0)


class UnexpectedStatus(UpstreamError):
    """An HTTP status the operation has no meaning for (carries `status`)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def parse_link_next(link: str | None) -> str | None:
    """The target of ``rel="next"`` in a ``Link`` header (pagination), if any."""
    if not link:
        return None
    m = _LINK_NEXT_RE.search(link)
    return m.group(1) if m else None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


def _shown(url: httpx.URL) -> str:
    """A URL as it may be logged: no query string, no userinfo."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


@dataclass(frozen=True)
class _Endpoint:
    """Where to send a registry's requests: Docker Hub's API host, or one of its mirrors."""

    host: str
    origin: str
    #: The host credentials are looked up for (the registry name, or the mirror's host).
    registry: str
    policy: RetryPolicy
    insecure: bool
    is_mirror: bool = False

    def url(self, path: str) -> httpx.URL:
        return httpx.URL(self.origin + path)


class _Retry(Exception):
    """A failed attempt worth repeating; `error` is raised when the attempts run out."""

    def __init__(self, error: RegistrishError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class _BlobSink:
    """The partial file a blob streams into: hashed as it grows, never past `size`."""

    def __init__(
        self, dest: Path, size: int, on_bytes: Callable[[int], None] | None, what: str
    ) -> None:
        self.dest, self.size, self.what = dest, size, what
        self._on_bytes = on_bytes or (lambda _n: None)
        self.hasher = hashlib.sha256()
        self.written = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._file = dest.open("ab")
        try:
            self._adopt_existing()
        except BaseException:
            self._file.close()
            raise

    def _adopt_existing(self) -> None:
        # Bytes left by an interrupted run are hashed and kept: the download resumes after them.
        existing = os.fstat(self._file.fileno()).st_size
        if existing > self.size:
            self._file.truncate(0)
            return
        with self.dest.open("rb") as old:
            while self.written < existing:
                chunk = old.read(min(_CHUNK, existing - self.written))
                if not chunk:
                    break
                self.hasher.update(chunk)
                self.written += len(chunk)
        if self.written:
            self._on_bytes(self.written)

    def restart(self) -> None:
        """Discard everything (the server ignored our Range, or answered another one)."""
        self._file.truncate(0)
        self.hasher = hashlib.sha256()
        if self.written:
            self._on_bytes(-self.written)
        self.written = 0

    def write(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self.size:
            raise IntegrityError(
                f"{self.what}: the registry sent more than the declared {self.size} bytes",
                hint="the manifest and the registry disagree; report it to the image's publisher",
            )
        self._file.write(chunk)
        self.hasher.update(chunk)
        self.written += len(chunk)
        self._on_bytes(len(chunk))

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def finish(self) -> VerifiedFile:
        """fsync and close; the stamp is taken from the handle that wrote every byte."""
        self._file.flush()
        os.fsync(self._file.fileno())
        stamp = FileStamp.of(os.fstat(self._file.fileno()))
        self._file.close()
        return VerifiedFile(self.digest, self.written, stamp)

    def discard(self) -> None:
        self._file.close()
        self.dest.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


class _TransportByScheme(httpx.BaseTransport):
    """Plain-HTTP requests on one pool, HTTPS on another made at the first HTTPS request:
    building a verifying transport loads the CA bundle (0.17 s measured), which a run
    against `insecure` (http://) registries only never needs. HTTPS is always verified."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        # Only ever given http:// requests (checked per request below): nothing to verify.
        self._plain = httpx.HTTPTransport(verify=False, limits=limits)
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport(limits=self._limits)
            tls = self._tls
        return tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        with self._lock:
            if self._tls is not None:
                self._tls.close()


class RegistryClient:
    """A thread-safe client for the distribution (OCI) pull API of upstream registries."""

    def __init__(
        self,
        *,
        settings: Callable[[str], RegistrySettings] | None = None,
        credentials: CredentialStore | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections_per_registry: int = DEFAULT_JOBS,
        retry: RetryPolicy = DEFAULT_RETRY,
        console: Console | None = None,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console or Console()
        self._settings = settings or (lambda _registry: RegistrySettings())
        if credentials is None:
            credentials = CredentialStore.from_environment(warn=self._console.warn)
        self._retry = retry
        self._sleep = sleep
        self._max_per_host = max(1, max_connections_per_registry)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.Client(
            transport=transport or _TransportByScheme(limits),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            limits=limits,
            headers={"User-Agent": USER_AGENT},
        )
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._count = 0
        self._auth = Authenticator(credentials, fetch=self._fetch_token, clock=clock)
        self._limits = RateLimits(self._console)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def request_count(self) -> int:
        """Every HTTP request sent so far, token requests included."""
        with self._lock:
            return self._count

    def plan_manifest_gets(self, registry: str, gets: int) -> None:
        """Say so now when `gets` manifest GETs are more than the registry's rate limit left."""
        self._limits.plan(registry, gets)

    # -- public operations -------------------------------------------------------------------
    def ping(self, registry: str) -> None:
        """``GET /v2/``: reachable, speaks the registry API, and lets us in."""

        def op(ep: _Endpoint) -> None:
            self._call(
                ep,
                "GET",
                ep.url("/v2/"),
                scope=None,
                what="its API (/v2/)",
                not_found=f"{ep.host} does not serve the registry API (/v2/ answered 404)",
                consume=_drain,
            )

        self._with_endpoints(registry, op)

    def list_tags(self, repo: Reference) -> list[str]:
        """Every tag of `repo` (all pages), sorted; names outside the tag grammar are dropped."""
        name = validate_name(repo.repository)

        def op(ep: _Endpoint) -> list[str]:
            url: httpx.URL | None = ep.url(f"/v2/{name}/tags/list")
            tags: set[str] = set()
            seen: set[str] = set()
            while url is not None:
                if str(url) in seen or len(seen) >= MAX_TAG_PAGES:
                    raise UpstreamError(
                        f"registry {ep.host} paginates the tags of {repo.repository_ref} in a loop"
                    )
                seen.add(str(url))
                body, link = self._call(
                    ep,
                    "GET",
                    url,
                    scope=_pull_scope(name),
                    what=repo.repository_ref,
                    not_found=f"repository {repo.repository_ref} not found",
                    consume=lambda r: (
                        _read_capped(r, MAX_TAGS_PAGE, f"tag list of {repo.repository_ref}"),
                        r.headers.get("link"),
                    ),
                )
                tags.update(self._page_tags(body, ep, repo))
                url = self._next_page(url, parse_link_next(link), ep, repo)
            return sorted(tags)

        return self._with_endpoints(repo.registry, op)

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        """Digest, media type and size of a manifest, from ``HEAD`` (which Docker Hub does not
        count against its pull limit); ``GET`` only when the ``HEAD`` answer lacks them."""
        name, kind = validate_name(repo.repository), _validate_ref(ref)

        def op(ep: _Endpoint) -> ManifestInfo | None:
            try:
                headers = self._call(
                    ep,
                    "HEAD",
                    ep.url(f"/v2/{name}/manifests/{ref}"),
                    scope=_pull_scope(name),
                    what=repo.repository_ref,
                    not_found=f"{kind} {ref!r} not found in {repo.repository_ref}",
                    headers={"Accept": mediatypes.ACCEPT},
                    consume=lambda r: r.headers,
                )
            except UnexpectedStatus as exc:
                if exc.status in (400, 405, 501):  # HEAD unsupported: GET will tell
                    return None
                raise
            digest = headers.get("docker-content-digest", "")
            media_type = mediatypes.strip_parameters(headers.get("content-type", ""))
            length = headers.get("content-length", "")
            if not is_digest(digest) or media_type not in mediatypes.MANIFEST_TYPES:
                return None
            if not length.isdigit() or int(length) > MAX_MANIFEST_BYTES:
                return None
            if kind == "manifest" and digest != ref:
                raise IntegrityError(
                    f"registry {ep.host} answered {repo.repository_ref}@{ref} with digest {digest}",
                    hint="the registry or a proxy in between serves wrong content",
                )
            return ManifestInfo(digest=digest, media_type=media_type, size=int(length))

        info = self._with_endpoints(repo.registry, op)
        if info is not None:
            return info
        fetched = self.get_manifest(repo, ref)
        return ManifestInfo(fetched.digest, fetched.media_type, len(fetched.data))

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        """The manifest's exact bytes, at most 4 MiB, verified against `expected_digest`,
        against `ref` when it is a digest, and against ``Docker-Content-Digest`` if sent."""
        name, kind = validate_name(repo.repository), _validate_ref(ref)
        if expected_digest is not None:
            validate_digest(expected_digest)
        what = f"{repo.repository_ref}{'@' if kind == 'manifest' else ':'}{ref}"

        def op(ep: _Endpoint) -> FetchedManifest:
            data, content_type, header_digest = self._call(
                ep,
                "GET",
                ep.url(f"/v2/{name}/manifests/{ref}"),
                scope=_pull_scope(name),
                what=repo.repository_ref,
                not_found=f"{kind} {ref!r} not found in {repo.repository_ref}",
                headers={"Accept": mediatypes.ACCEPT},
                consume=lambda r: (
                    _read_capped(r, MAX_MANIFEST_BYTES, f"manifest {what}", IntegrityError),
                    r.headers.get("content-type", ""),
                    r.headers.get("docker-content-digest"),
                ),
            )
            digest = sha256_digest(data)
            expected: list[tuple[str | None, str]] = [(expected_digest, "the expected digest")]
            expected.append((ref if kind == "manifest" else None, "the requested digest"))
            if header_digest and header_digest.startswith("sha256:"):
                expected.append((header_digest, "its Docker-Content-Digest header"))
            for want, source in expected:
                if want is not None and want != digest:
                    raise IntegrityError(
                        f"manifest {what} from {ep.host} hashes to {digest}, not {source} {want}",
                        hint="the registry or a proxy in between serves wrong content; "
                        "if the tag moved, run 'registrish lock --upgrade'",
                    )
            media_type = _manifest_type(content_type, data)
            if media_type not in mediatypes.MANIFEST_TYPES and not _is_json_object(data):
                # An HTML error page or a captive portal: say so instead of "not JSON".
                raise UpstreamError(
                    f"registry {ep.host} answered {what} with "
                    f"{mediatypes.strip_parameters(content_type) or 'no Content-Type'}, "
                    "not a manifest",
                    hint="is a proxy or portal in between? check the registry's address",
                )
            return FetchedManifest(data=data, media_type=media_type, digest=digest)

        return self._with_endpoints(repo.registry, op)

    def list_referrers(self, repo: Reference, digest: str) -> list[Descriptor] | None:
        """What refers to `digest`, from the OCI 1.1 referrers API (every page), or None when
        the registry has no such API (it answers 404, 400, 405 or 501): the caller then
        falls back to the tag schemas. Descriptors are validated like a manifest's."""
        name = validate_name(repo.repository)
        validate_digest(digest)
        what = f"referrers of {repo.repository_ref}@{digest}"

        def op(ep: _Endpoint) -> list[Descriptor] | None:
            url: httpx.URL | None = ep.url(f"/v2/{name}/referrers/{digest}")
            found: list[Descriptor] = []
            seen: set[str] = set()
            while url is not None:
                if str(url) in seen or len(seen) >= MAX_TAG_PAGES:
                    raise UpstreamError(f"registry {ep.host} paginates the {what} in a loop")
                seen.add(str(url))
                try:
                    body, link = self._call(
                        ep,
                        "GET",
                        url,
                        scope=_pull_scope(name),
                        what=what,
                        not_found=f"registry {ep.host} has no referrers API",
                        headers={"Accept": mediatypes.OCI_INDEX},
                        consume=lambda r: (
                            _read_capped(r, MAX_MANIFEST_BYTES, what),
                            r.headers.get("link"),
                        ),
                    )
                except NotFoundError:
                    if found or len(seen) > 1:
                        raise
                    return None
                except UnexpectedStatus as exc:
                    if exc.status in (400, 405, 501) and len(seen) == 1:
                        return None
                    raise
                try:
                    index = parse_manifest(body, content_type=mediatypes.OCI_INDEX)
                except IntegrityError as exc:
                    raise UpstreamError(
                        f"registry {ep.host} sent an invalid {what}: {exc.message}"
                    ) from None
                if not index.is_index:
                    raise UpstreamError(f"registry {ep.host} sent {what} that is not an index")
                found.extend(index.children)
                url = self._next_page(url, parse_link_next(link), ep, repo)
            return found

        return self._with_endpoints(repo.registry, op)

    def fetch_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        dest: Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> VerifiedFile:
        """Stream a blob into `dest` and verify its size and sha256; resume after bytes a
        previous run left there (``Range``). On a mismatch `dest` is deleted. Returns what
        was verified (digest, size, and the stamp of the file as fsynced) so the caller
        need not hash the file again.

        `on_bytes(n)` is called for every chunk that lands in `dest`, for bytes kept from a
        previous run (once, up front), and with a negative count when a download restarts."""
        name = validate_name(repo.repository)
        validate_digest(digest)
        if size < 0:
            raise IntegrityError(f"blob {digest} of {repo.repository_ref}: negative size {size}")
        what = f"blob {digest} of {repo.repository_ref}"

        def download(ep: _Endpoint, sink: _BlobSink) -> None:
            if sink.written < size:
                self._call(
                    ep,
                    "GET",
                    ep.url(f"/v2/{name}/blobs/{digest}"),
                    scope=_pull_scope(name),
                    what=repo.repository_ref,
                    not_found=f"{what} not found",
                    headers=lambda: _range_headers(sink.written),
                    consume=lambda r: _consume_blob(r, sink),
                    extra_ok=frozenset({416}),
                )

        def op(ep: _Endpoint) -> VerifiedFile:
            sink = _BlobSink(dest, size, on_bytes, what)
            try:
                resumed = sink.written > 0
                download(ep, sink)
                if sink.digest != digest and resumed:
                    # The bytes kept from an earlier run may be the wrong ones (a disk error,
                    # a killed writer): start over once before blaming the registry.
                    sink.restart()
                    download(ep, sink)
                if sink.digest != digest:
                    raise IntegrityError(
                        f"{what}: the {size} bytes received hash to {sink.digest}",
                        hint="the registry or a proxy in between serves wrong content",
                    )
                if sink.written != size:  # `_consume_blob` retries short bodies; be explicit
                    raise IntegrityError(f"{what}: received {sink.written} of {size} bytes")
                return sink.finish()
            except IntegrityError:
                sink.discard()
                raise
            finally:
                sink.close()

        return self._with_endpoints(repo.registry, op)

    # -- endpoints ---------------------------------------------------------------------------
    def _endpoints(self, registry: str) -> list[_Endpoint]:
        settings = self._settings(registry)
        endpoints = []
        if registry == DOCKER_HUB:
            for mirror in settings.mirrors:
                scheme, _, rest = mirror.rpartition("://")
                host = rest.split("/", 1)[0]
                insecure = scheme == "http" or self._settings(host).insecure
                scheme = "http" if insecure else "https"
                endpoints.append(
                    _Endpoint(
                        host=host,
                        origin=f"{scheme}://{host}",
                        registry=host,
                        policy=_MIRROR_POLICY,
                        insecure=insecure,
                        is_mirror=True,
                    )
                )
        api_host = Reference(registry, "x").api_host
        scheme = "http" if settings.insecure else "https"
        endpoints.append(
            _Endpoint(
                host=api_host,
                origin=f"{scheme}://{api_host}",
                registry=registry,
                policy=self._retry,
                insecure=settings.insecure,
            )
        )
        return endpoints

    def _with_endpoints(self, registry: str, op: Callable[[_Endpoint], T]) -> T:
        *mirrors, primary = self._endpoints(registry)
        for ep in mirrors:
            try:
                return op(ep)
            except (UpstreamError, IntegrityError) as exc:
                self._console.debug(f"mirror {ep.host} failed ({exc.message}); trying the next")
        return op(primary)

    def _semaphore(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._semaphores.get(host)
            if sem is None:
                sem = self._semaphores[host] = threading.BoundedSemaphore(self._max_per_host)
            return sem

    # -- one logical request: retries, redirects, auth ---------------------------------------
    def _call(
        self,
        ep: _Endpoint,
        method: str,
        url: httpx.URL,
        *,
        scope: str | None,
        what: str,
        not_found: str,
        consume: Callable[[httpx.Response], T],
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        extra_ok: frozenset[int] = frozenset(),
    ) -> T:
        auth = self._auth.for_request(
            origin=ep.origin, registry=ep.registry, scope=scope, what=what
        )
        failures = 0
        while True:
            base = headers() if callable(headers) else headers or {}
            try:
                with self._semaphore(ep.host):
                    return self._attempt(
                        ep, method, url, auth, base, consume, not_found, what, extra_ok
                    )
            except _Retry as retry:
                failures += 1
                if failures >= ep.policy.attempts:
                    raise retry.error from None
                delay = backoff_delay(ep.policy, failures, retry.retry_after, random.random())
                self._console.debug(
                    f"{retry.error.message}; retry {failures}/{ep.policy.attempts - 1} "
                    f"in {delay:.1f} s"
                )
                self._sleep(delay)

    def _attempt(
        self,
        ep: _Endpoint,
        method: str,
        url: httpx.URL,
        auth: RequestAuth,
        base: Mapping[str, str],
        consume: Callable[[httpx.Response], T],
        not_found: str,
        what: str,
        extra_ok: frozenset[int],
    ) -> T:
        registry_origin = _origin(ep.url("/"))
        current = url
        redirects = auth_rounds = 0
        while True:
            send_headers = dict(base)
            own_origin = _origin(current) == registry_origin
            if own_origin:
                authorization = auth.authorization()
                if authorization:
                    send_headers["Authorization"] = authorization
            response = self._send(ep, method, current, send_headers)
            try:
                status = response.status_code
                if status in REDIRECT_STATUSES and "location" in response.headers:
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise UpstreamError(
                            f"registry {ep.host} redirected {what} more than {MAX_REDIRECTS} times"
                        )
                    current = current.join(response.headers["location"])
                    if current.scheme not in ("http", "https"):
                        raise UpstreamError(
                            f"registry {ep.host} redirected {what} to a non-HTTP URL"
                        )
                    if status == 303:
                        method = "GET" if method != "HEAD" else method
                    continue
                if status == 401 and own_origin:
                    auth_rounds += 1
                    if auth_rounds > 3:  # RequestAuth gives up sooner; this guards a loop
                        raise auth.forbidden()
                    auth.unauthorized(response.headers.get("www-authenticate"))
                    continue
                if 200 <= status < 300 or status in extra_ok:
                    try:
                        return consume(response)
                    except httpx.TransportError as exc:
                        raise _Retry(self._transport_error(ep, exc, what)) from None
                    except httpx.DecodingError:
                        raise UpstreamError(
                            f"registry {ep.host} sent an undecodable body for {what}"
                        ) from None
                raise self._status_error(ep, response, own_origin, auth, what, not_found)
            finally:
                response.close()

    def _send(
        self, ep: _Endpoint, method: str, url: httpx.URL, headers: Mapping[str, str]
    ) -> httpx.Response:
        request = self._client.build_request(method, url, headers=headers)
        started = time.monotonic()
        with self._lock:
            self._count += 1
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            self._console.debug(f"{method} {_shown(url)} -> {type(exc).__name__}")
            raise _Retry(self._transport_error(ep, exc, None)) from None
        self._console.debug(
            f"{method} {_shown(url)} -> {response.status_code} ({time.monotonic() - started:.2f} s)"
        )
        self._limits.observe(ep.registry, response.headers)
        return response

    def _status_error(
        self,
        ep: _Endpoint,
        response: httpx.Response,
        own_origin: bool,
        auth: RequestAuth,
        what: str,
        not_found: str,
    ) -> Exception:
        status = response.status_code
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if status == 429:
                limited = exhausted(ep.host, response.headers, what, _error_detail(response))
                if limited is not None:
                    return limited
                error: RegistrishError = UpstreamError(
                    f"registry {ep.host} is rate-limiting requests for {what} (HTTP 429)",
                    hint="wait and retry, log in for a higher limit, or configure a mirror",
                )
            else:
                error = UpstreamError(
                    f"registry {ep.host} answered HTTP {status} for {what}",
                    hint="the registry has trouble; retry later",
                )
            return _Retry(error, retry_after)
        if status == 404:
            return NotFoundError(not_found)
        if status in (401, 403) and not own_origin:
            # A storage backend refusing a (signed) redirect URL: a fresh redirect may work.
            return _Retry(
                UpstreamError(f"the storage {ep.host} redirected to refused {what} (HTTP {status})")
            )
        if status == 403:
            return auth.forbidden()
        detail = _error_detail(response)
        return UnexpectedStatus(
            f"registry {ep.host} answered HTTP {status} for {what}{detail}", status=status
        )

    def _transport_error(
        self, ep: _Endpoint, exc: httpx.TransportError, what: str | None
    ) -> UpstreamError:
        reason = _describe_transport_error(exc)
        if what is not None:
            return UpstreamError(
                f"lost the connection to registry {ep.host} while reading {what}: {reason}"
            )
        if ep.insecure or ep.is_mirror or ep.registry == DOCKER_HUB:
            hint = "check the address and the network"
        else:
            hint = (
                "check the address and the network; for a plain-HTTP registry set "
                f'[registries."{ep.registry}"] insecure = true in the config'
            )
        return UpstreamError(f"cannot reach registry {ep.host}: {reason}", hint=hint)

    # -- token requests (called by auth) -----------------------------------------------------
    def _fetch_token(self, request: httpx.Request) -> tuple[int, bytes]:
        host = request.url.netloc.decode("ascii")
        request.headers["User-Agent"] = USER_AGENT  # built outside the client: no defaults
        failures = 0
        while True:
            with self._lock:
                self._count += 1
            started = time.monotonic()
            retry_after: float | None = None
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                self._console.debug(
                    f"{request.method} {_shown(request.url)} -> {type(exc).__name__}"
                )
                error = UpstreamError(
                    f"cannot reach token service {host}: {_describe_transport_error(exc)}",
                    hint="check the network",
                )
            else:
                try:
                    self._console.debug(
                        f"{request.method} {_shown(request.url)} -> {response.status_code} "
                        f"({time.monotonic() - started:.2f} s)"
                    )
                    if response.status_code not in RETRY_STATUSES:
                        body = _read_capped(response, MAX_TOKEN_RESPONSE, f"token from {host}")
                        return response.status_code, body
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    error = UpstreamError(
                        f"token service {host} answered HTTP {response.status_code}"
                    )
                except httpx.TransportError as exc:
                    error = UpstreamError(
                        f"lost the connection to token service {host}: "
                        f"{_describe_transport_error(exc)}"
                    )
                finally:
                    response.close()
            failures += 1
            if failures >= self._retry.attempts:
                raise error
            self._sleep(backoff_delay(self._retry, failures, retry_after, random.random()))

    # -- tag pages -----------------------------------------------------------------------------
    def _page_tags(self, body: bytes, ep: _Endpoint, repo: Reference) -> list[str]:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("tags", []), (list, type(None))):
            raise UpstreamError(
                f"registry {ep.host} sent an invalid tag list for {repo.repository_ref}"
            )
        tags = []
        for tag in doc.get("tags") or ():
            if isinstance(tag, str) and is_tag(tag):
                tags.append(tag)
            else:
                self._console.debug(f"ignoring invalid tag {tag!r} of {repo.repository_ref}")
        return tags

    @staticmethod
    def _next_page(
        url: httpx.URL, link: str | None, ep: _Endpoint, repo: Reference
    ) -> httpx.URL | None:
        if link is None:
            return None
        target = url.join(link)
        if _origin(target) != _origin(url):
            raise UpstreamError(
                f"registry {ep.host} points the tag list of {repo.repository_ref} to another host"
            )
        return target


# -- helpers ---------------------------------------------------------------------------------
def _pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def _validate_ref(ref: str) -> str:
    """'manifest' for a digest, 'tag' for a tag; raises on anything else."""
    if ref.startswith("sha256:") or ":" in ref:
        validate_digest(ref)
        return "manifest"
    validate_tag(ref)
    return "tag"


def _manifest_type(content_type: str, data: bytes) -> str:
    """The response's media type; when it is generic, the document's own ``mediaType``."""
    media_type = mediatypes.strip_parameters(content_type)
    if media_type in mediatypes.MANIFEST_TYPES:
        return media_type
    try:
        doc = json.loads(data)
    except ValueError:
        return media_type
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared in mediatypes.MANIFEST_TYPES:
        return declared
    return media_type


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def _range_headers(offset: int) -> dict[str, str]:
    # identity: hash the bytes as stored, never a re-encoding.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return headers


def _consume_blob(response: httpx.Response, sink: _BlobSink) -> None:
    status = response.status_code
    if status == 416:  # our partial file is not a prefix the server agrees with
        sink.restart()
        raise _Retry(UpstreamError(f"{sink.what}: range not satisfiable; restarting"))
    if status == 206:
        m = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
        if m is None or int(m.group(1)) != sink.written:
            sink.restart()
            raise _Retry(UpstreamError(f"{sink.what}: the registry answered another range"))
    elif sink.written:
        sink.restart()  # 200: the server ignored Range and sends everything
    for chunk in _raw_chunks(response):
        sink.write(chunk)
    if sink.written < sink.size:
        raise _Retry(
            UpstreamError(
                f"{sink.what}: connection closed after {sink.written} of {sink.size} bytes"
            )
        )


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body exactly as sent (no Content-Encoding decoding): digests are of these bytes."""
    if response.is_stream_consumed:  # already in memory (in-process transports do that)
        data = response.content
        for start in range(0, len(data), _CHUNK):
            yield data[start : start + _CHUNK]
        return
    # No chunk_size: httpx would buffer up to it, and a dropped connection would lose that
    # much of what we could have resumed after.
    yield from response.iter_raw()


def _drain(response: httpx.Response) -> None:
    _read_capped(response, _MAX_ERROR_BODY, "response")


def _read_capped(
    response: httpx.Response,
    cap: int,
    what: str,
    error: type[RegistrishError] = UpstreamError,
) -> bytes:
    """The body, refusing (and no longer reading) past `cap` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise error(f"{what} is {int(declared)} bytes, over the {cap} byte limit")
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > cap:
            raise error(f"{what} is over the {cap} byte limit")
    return bytes(body)


def _error_detail(response: httpx.Response) -> str:
    """`` (CODE: message)`` from an OCI error body, if there is one."""
    try:
        body = _read_capped(response, _MAX_ERROR_BODY, "error")
        doc = json.loads(body)
        first = doc["errors"][0]
        text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (
        RegistrishError,
        httpx.HTTPError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ):
        return ""
    return f" ({text[:200]})" if text else ""


def _describe_transport_error(exc: httpx.TransportError) -> str:
    text = str(exc).lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "connection refused" in text:
        return "connection refused"
    if "name or service not known" in text or "name resolution" in text or "nodename" in text:
        return "unknown host"
    if "certificate" in text:
        return "TLS certificate verification failed"
    if "ssl" in text or "tls" in text or "wrong version number" in text:
        return "TLS handshake failed (is it a plain-HTTP registry?)"
    if "reset" in text:
        return "connection reset"
    return type(exc).__name__
