"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and the token flow.

Only token responses are ever buffered: the registry client streams every other body and
asks a `RequestAuth` what ``Authorization`` to send and what to do about a 401. Tokens are
cached per (realm, service, scope) until shortly before they expire; a rejected token is
dropped and fetched again once, then the request fails with `AuthError`.

Token fetches go through a `TokenFetcher` the client supplies (its transport, retries and
logging), so this module does no I/O of its own.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from ..errors import AuthError, UpstreamError
from .credentials import Credential, CredentialStore, how_to_provide

#: Tokens are refreshed this long before they expire (at most a tenth of their lifetime).
REFRESH_MARGIN = 10.0
DEFAULT_EXPIRES_IN = 60
#: A token response is small; anything bigger is not a token response.
MAX_TOKEN_RESPONSE = 1024 * 1024

#: Sends one token request and returns (status, body read up to MAX_TOKEN_RESPONSE bytes).
TokenFetcher = Callable[[httpx.Request], tuple[int, bytes]]

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_PARAM_RE = re.compile(rf"({_TOKEN})\s*=\s*(.*)", re.DOTALL)
_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_SCHEME_RE = re.compile(rf"({_TOKEN})(?:\s+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lowercased, ``params``
    its auth-params (``realm``, ``service``, ``scope``, ``error`` …) as sent."""

    scheme: str
    params: Mapping[str, str]


def _split_items(value: str) -> list[str]:
    """Split at commas outside quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return [item for item in items if item]


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse RFC 9110 challenges: ``Bearer realm="…",service="…", Basic realm="x"``.

    A comma-separated item of the form ``name=value`` is a parameter of the current
    challenge; any other item starts a new challenge (``scheme [param | token68]``)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for item in _split_items(value):
        param = _PARAM_RE.fullmatch(item)
        if param is not None and challenges:
            challenges[-1][1][param.group(1).lower()] = _unquote(param.group(2))
            continue
        scheme = _SCHEME_RE.fullmatch(item)
        if scheme is None:
            continue
        params: dict[str, str] = {}
        rest = _PARAM_RE.fullmatch(scheme.group(2) or "")
        if rest is not None and not _TOKEN68_RE.fullmatch(scheme.group(2)):
            params[rest.group(1).lower()] = _unquote(rest.group(2))
        challenges.append((scheme.group(1).lower(), params))
    return [Challenge(scheme=s, params=p) for s, p in challenges]


@dataclass(frozen=True)
class Token:
    value: str
    #: Monotonic time after which the token is no longer used.
    use_until: float


TokenKey = tuple[str, str, str]  # (realm, service, scope)


class TokenCache:
    """Thread-safe tokens per (realm, service, scope)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and self._clock() >= token.use_until:
                del self._tokens[key]
                return None
            return token

    def put(self, key: TokenKey, value: str, expires_in: float) -> Token:
        margin = min(REFRESH_MARGIN, expires_in / 10)
        token = Token(value=value, use_until=self._clock() + expires_in - margin)
        with self._lock:
            self._tokens[key] = token
        return token

    def drop(self, key: TokenKey, value: str) -> None:
        """Forget ``key`` if it still holds the rejected ``value`` (another thread may
        already have replaced it with a good one)."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]


class Authenticator:
    """Shared auth state for one registry client: credentials, tokens, and the challenge
    each endpoint last sent (so later requests authenticate without a 401 first)."""

    def __init__(
        self,
        credentials: CredentialStore,
        *,
        fetch: TokenFetcher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.tokens = TokenCache(clock)
        self._fetch = fetch
        self._known: dict[str, Challenge] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[TokenKey, threading.Lock] = {}

    def for_request(
        self, *, origin: str, registry: str, scope: str | None, what: str
    ) -> RequestAuth:
        """State for one logical request to ``origin`` (``https://host:port``).

        ``registry`` is the host credentials are looked up for; ``what`` names the target
        in messages (``docker.io/library/alpine``)."""
        return RequestAuth(self, origin=origin, registry=registry, scope=scope, what=what)

    def known_challenge(self, origin: str) -> Challenge | None:
        with self._lock:
            return self._known.get(origin)

    def remember(self, origin: str, challenge: Challenge) -> None:
        with self._lock:
            self._known[origin] = challenge

    def token(
        self, challenge: Challenge, scope: str, *, origin: str, registry: str, what: str
    ) -> tuple[TokenKey, str]:
        """A token for ``scope`` from the cache, or fetched once even under concurrency."""
        realm = challenge.params.get("realm")
        if not realm:
            raise UpstreamError(
                f"registry {registry} sent a Bearer challenge without a realm for {what}"
            )
        key: TokenKey = (realm, challenge.params.get("service", ""), scope)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            cached = self.tokens.get(key)
            if cached is not None:
                return key, cached.value
            value, expires_in = self._request_token(
                key, self.credentials.lookup(registry), origin=origin, registry=registry, what=what
            )
            self.tokens.put(key, value, expires_in)
            return key, value

    def _request_token(
        self,
        key: TokenKey,
        cred: Credential | None,
        *,
        origin: str,
        registry: str,
        what: str,
    ) -> tuple[str, float]:
        realm, service, scope = key
        realm_url = httpx.URL(realm)
        if realm_url.scheme not in ("http", "https"):
            raise UpstreamError(f"registry {registry} sent an invalid token realm {realm!r}")
        # Plain HTTP is opted into per registry: never send secrets to another plain host.
        if (
            cred is not None
            and realm_url.scheme == "http"
            and realm_url.host != httpx.URL(origin).host
        ):
            raise AuthError(
                f"registry {registry} asks for credentials at a plain-HTTP token service "
                f"({realm_url.host}); refusing to send them",
                hint="use a registry whose token service speaks HTTPS",
            )
        params = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        headers = {"Accept": "application/json"}
        if cred is not None and cred.identity_token is not None:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": cred.identity_token,
                "client_id": "registrish",
                **params,
            }
            request = httpx.Request("POST", realm_url, data=form, headers=headers)
        else:
            if cred is not None:
                headers["Authorization"] = cred.basic_authorization()
            request = httpx.Request("GET", realm_url, params=params, headers=headers)
        status, body = self._fetch(request)
        if status in (401, 403):
            if cred is None:
                raise AuthError(
                    f"registry {registry} refused an anonymous token for {what}",
                    hint=how_to_provide(registry),
                )
            raise AuthError(
                f"registry {registry} refused the credentials from {cred.source} for {what}",
                hint=f"check them, then {how_to_provide(registry)}",
            )
        if status != 200:
            raise UpstreamError(
                f"token service of registry {registry} answered HTTP {status} for {what}"
            )
        return parse_token_response(body, registry=registry)


def parse_token_response(body: bytes, *, registry: str) -> tuple[str, float]:
    """``(token, expires_in)`` from a token response (``token`` or ``access_token``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamError(f"token service of registry {registry} sent no JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise UpstreamError(f"token service of registry {registry} sent no token")
    expires_in = doc.get("expires_in", DEFAULT_EXPIRES_IN)
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return value, float(expires_in)


class RequestAuth:
    """What to authenticate one logical request (and its retries) with."""

    def __init__(
        self,
        auth: Authenticator,
        *,
        origin: str,
        registry: str,
        scope: str | None,
        what: str,
    ) -> None:
        self._auth = auth
        self.origin = origin
        self.registry = registry
        self.scope = scope
        self.what = what
        self._header: str | None = None
        self._preempted = False
        self._token_key: TokenKey | None = None
        self._token: str | None = None
        self._refreshed = False
        self._sent_basic = False

    def authorization(self) -> str | None:
        """The ``Authorization`` value for the next request to our origin, if any."""
        if self._header is None and not self._preempted:
            self._preempted = True
            known = self._auth.known_challenge(self.origin)
            if known is not None:
                # The endpoint challenged us before: answer up front, saving a round trip.
                self._header = self._answer(known, preemptive=True)
        return self._header

    def unauthorized(self, www_authenticate: str | None) -> None:
        """Handle a 401: choose the next ``Authorization`` or raise `AuthError`."""
        self._preempted = True
        challenges = parse_www_authenticate(www_authenticate or "")
        chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
            (c for c in challenges if c.scheme == "basic"), None
        )
        if chosen is None:
            raise self._needs_credentials(
                f"refused access to {self.what} without a usable authentication challenge"
            )
        self._auth.remember(self.origin, chosen)
        self._header = self._answer(chosen, preemptive=False)

    def forbidden(self) -> AuthError:
        """The error for a 403."""
        cred = self._auth.credentials.lookup(self.registry)
        if cred is None:
            return self._needs_credentials(
                f"denied access to {self.what} (it does not exist or needs credentials)"
            )
        return AuthError(
            f"registry {self.registry} denied the credentials from {cred.source} "
            f"access to {self.what}",
            hint="check that this account may pull it",
        )

    def _answer(self, challenge: Challenge, *, preemptive: bool) -> str | None:
        if challenge.scheme == "basic":
            cred = self._auth.credentials.lookup(self.registry)
            if cred is None:
                if preemptive:
                    return None  # let the registry say what it wants for this path
                raise self._rejected(None)
            if self._sent_basic:
                raise self._rejected(cred)
            self._sent_basic = True
            return cred.basic_authorization()
        if challenge.scheme != "bearer":
            return None
        # Up front, the remembered challenge names another request's scope: use ours.
        offered = challenge.params.get("scope")
        scope = (self.scope or offered or "") if preemptive else (offered or self.scope or "")
        if self._token is not None:
            # The token we sent was refused (expired server-side, or insufficient_scope):
            # drop it and fetch a fresh one, once.
            if self._refreshed:
                raise self._rejected(self._auth.credentials.lookup(self.registry))
            assert self._token_key is not None
            self._auth.tokens.drop(self._token_key, self._token)
            self._refreshed = True
        self._token_key, self._token = self._auth.token(
            challenge, scope, origin=self.origin, registry=self.registry, what=self.what
        )
        return f"Bearer {self._token}"

    def _needs_credentials(self, detail: str) -> AuthError:
        """An access error whose fix is credentials: the hint says how to provide them."""
        return AuthError(f"registry {self.registry} {detail}", hint=how_to_provide(self.registry))

    def _rejected(self, cred: Credential | None) -> AuthError:
        if cred is None:
            return self._needs_credentials(
                f"requires credentials for {self.what} (or it does not exist)"
            )
        return AuthError(
            f"registry {self.registry} refused the credentials from {cred.source} for {self.what}",
            hint="check the credentials and that this account may pull it",
        )
