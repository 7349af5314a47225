"""The HTTP half of the registry client: the only code that sends requests to registries.

One shared `httpx.Client` (connection reuse, safe from a thread pool), a semaphore per
endpoint host bounding concurrency, bounded retries with exponential backoff and
``Retry-After``, redirects followed by hand so ``Authorization`` only ever goes to the
registry's own origin, auth challenges answered through `auth`, rate limits observed
through `ratelimit`, and Docker Hub mirrors tried before Docker Hub itself.
`registry.RegistryClient` builds the OCI operations on `RegistryHttp._call`.

Every request is logged at ``-v`` as ``GET https://host/v2/... -> 200 (0.12 s)``, without
headers or query strings (signed CDN URLs carry secrets there).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from .. import USER_AGENT
from ..console import Console
from ..errors import IntegrityError, NotFoundError, RegistrishError, UpstreamError
from ..lock.config import RegistrySettings
from ..oci.reference import DOCKER_HUB, Reference
from .auth import MAX_TOKEN_RESPONSE, Authenticator, RequestAuth
from .credentials import CredentialStore
from .protocols import DEFAULT_JOBS, Closing
from .ratelimit import (
    DEFAULT_RETRY,
    RateLimits,
    RetryPolicy,
    backoff_delay,
    exhausted,
    parse_retry_after,
)
from .transport import (
    TransportByScheme,
    describe_transport_error,
    error_detail,
    origin,
    read_capped,
    shown,
)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5

#: Mirrors get few attempts: Docker Hub is the fallback, not a failure.
_MIRROR_POLICY = RetryPolicy(attempts=2, base_delay=0.2, max_delay=2.0)


class UnexpectedStatus(UpstreamError):
    """An HTTP status the operation has no meaning for (carries `status`)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
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


class Retry(Exception):
    """A failed attempt worth repeating; `error` is raised when the attempts run out."""

    def __init__(self, error: RegistrishError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class RegistryHttp(Closing):
    """Requests to upstream registries, each one retried, redirected and authenticated as
    needed; thread-safe. The OCI operations live in the subclass `registry.RegistryClient`."""

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
            transport=transport or TransportByScheme(limits),
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

    @property
    def request_count(self) -> int:
        """Every HTTP request sent so far, token requests included."""
        with self._lock:
            return self._count

    def plan_manifest_gets(self, registry: str, gets: int) -> None:
        """Say so now when `gets` manifest GETs are more than the registry's rate limit left."""
        self._limits.plan(registry, gets)

    # -- endpoints ---------------------------------------------------------------------------
    def _endpoints(self, registry: str) -> list[Endpoint]:
        settings = self._settings(registry)
        endpoints = []
        if registry == DOCKER_HUB:
            for mirror in settings.mirrors:
                scheme, _, rest = mirror.rpartition("://")
                host = rest.split("/", 1)[0]
                insecure = scheme == "http" or self._settings(host).insecure
                scheme = "http" if insecure else "https"
                endpoints.append(
                    Endpoint(
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
            Endpoint(
                host=api_host,
                origin=f"{scheme}://{api_host}",
                registry=registry,
                policy=self._retry,
                insecure=settings.insecure,
            )
        )
        return endpoints

    def _with_endpoints(self, registry: str, op: Callable[[Endpoint], T]) -> T:
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
        ep: Endpoint,
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
            except Retry as retry:
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
        ep: Endpoint,
        method: str,
        url: httpx.URL,
        auth: RequestAuth,
        base: Mapping[str, str],
        consume: Callable[[httpx.Response], T],
        not_found: str,
        what: str,
        extra_ok: frozenset[int],
    ) -> T:
        registry_origin = origin(ep.url("/"))
        current = url
        redirects = auth_rounds = 0
        while True:
            send_headers = dict(base)
            own_origin = origin(current) == registry_origin
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
                        raise Retry(self._transport_error(ep, exc, what)) from None
                    except httpx.DecodingError:
                        raise UpstreamError(
                            f"registry {ep.host} sent an undecodable body for {what}"
                        ) from None
                raise self._status_error(ep, response, own_origin, auth, what, not_found)
            finally:
                response.close()

    def _send(
        self, ep: Endpoint, method: str, url: httpx.URL, headers: Mapping[str, str]
    ) -> httpx.Response:
        request = self._client.build_request(method, url, headers=headers)
        started = time.monotonic()
        with self._lock:
            self._count += 1
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            self._console.debug(f"{method} {shown(url)} -> {type(exc).__name__}")
            raise Retry(self._transport_error(ep, exc, None)) from None
        self._console.debug(
            f"{method} {shown(url)} -> {response.status_code} ({time.monotonic() - started:.2f} s)"
        )
        self._limits.observe(ep.registry, response.headers)
        return response

    def _status_error(
        self,
        ep: Endpoint,
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
                limited = exhausted(ep.host, response.headers, what, error_detail(response))
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
            return Retry(error, retry_after)
        if status == 404:
            return NotFoundError(not_found)
        if status in (401, 403) and not own_origin:
            # A storage backend refusing a (signed) redirect URL: a fresh redirect may work.
            return Retry(
                UpstreamError(f"the storage {ep.host} redirected to refused {what} (HTTP {status})")
            )
        if status == 403:
            return auth.forbidden()
        detail = error_detail(response)
        return UnexpectedStatus(
            f"registry {ep.host} answered HTTP {status} for {what}{detail}", status=status
        )

    def _transport_error(
        self, ep: Endpoint, exc: httpx.TransportError, what: str | None
    ) -> UpstreamError:
        reason = describe_transport_error(exc)
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
                    f"{request.method} {shown(request.url)} -> {type(exc).__name__}"
                )
                error = UpstreamError(
                    f"cannot reach token service {host}: {describe_transport_error(exc)}",
                    hint="check the network",
                )
            else:
                try:
                    self._console.debug(
                        f"{request.method} {shown(request.url)} -> {response.status_code} "
                        f"({time.monotonic() - started:.2f} s)"
                    )
                    if response.status_code not in RETRY_STATUSES:
                        body = read_capped(response, MAX_TOKEN_RESPONSE, f"token from {host}")
                        return response.status_code, body
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    error = UpstreamError(
                        f"token service {host} answered HTTP {response.status_code}"
                    )
                except httpx.TransportError as exc:
                    error = UpstreamError(
                        f"lost the connection to token service {host}: "
                        f"{describe_transport_error(exc)}"
                    )
                finally:
                    response.close()
            failures += 1
            if failures >= self._retry.attempts:
                raise error
            self._sleep(backoff_delay(self._retry, failures, retry_after, random.random()))
