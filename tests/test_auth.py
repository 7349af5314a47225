"""Challenge parsing, the token cache and token responses (pure parts of `auth`)."""

from __future__ import annotations

import httpx
import pytest

from registrish_lock.errors import AuthError, UpstreamError
from registrish_lock.upstream.auth import (
    Authenticator,
    TokenCache,
    parse_token_response,
    parse_www_authenticate,
)
from registrish_lock.upstream.credentials import CredentialStore


def test_parse_docker_hub_bearer_challenge() -> None:
    [c] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_quoted_commas_and_token68() -> None:
    got = parse_www_authenticate(
        'Basic realm="a, \\"b\\"", Bearer realm="https://x/t",scope="repository:a:pull,push", '
        "Negotiate abc==, Digest"
    )
    assert [c.scheme for c in got] == ["basic", "bearer", "negotiate", "digest"]
    assert got[0].params == {"realm": 'a, "b"'}
    assert got[1].params == {"realm": "https://x/t", "scope": "repository:a:pull,push"}
    assert got[2].params == {}


def test_parse_garbage_is_empty() -> None:
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate(" , ,") == []


def test_token_cache_expiry_with_margin() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    key = ("https://auth/t", "svc", "repository:a:pull")
    cache.put(key, "t1", 300)
    now[0] = 289.0
    assert cache.get(key) is not None and cache.get(key).value == "t1"  # type: ignore[union-attr]
    now[0] = 290.5  # 10 s margin before expiry
    assert cache.get(key) is None
    cache.put(key, "t2", 60)  # short tokens: a tenth of the lifetime
    now[0] += 53.0
    assert cache.get(key) is not None
    now[0] += 1.5
    assert cache.get(key) is None


def test_drop_only_removes_the_rejected_token() -> None:
    cache = TokenCache(clock=lambda: 0.0)
    key = ("r", "s", "x")
    cache.put(key, "new", 60)
    cache.drop(key, "old")  # another thread already refreshed it
    assert cache.get(key) is not None
    cache.drop(key, "new")
    assert cache.get(key) is None


def test_token_response_variants() -> None:
    assert parse_token_response(b'{"token": "a", "expires_in": 300}', registry="r") == ("a", 300.0)
    assert parse_token_response(b'{"access_token": "b"}', registry="r") == ("b", 60.0)
    assert parse_token_response(b'{"token": "c", "expires_in": -5}', registry="r") == ("c", 60.0)
    for bad in (b"not json", b"[]", b'{"token": ""}', b'{"expires_in": 3}'):
        with pytest.raises(UpstreamError, match="token service of registry r"):
            parse_token_response(bad, registry="r")


def test_credentials_never_go_to_a_plain_http_realm_on_another_host() -> None:
    sent: list[httpx.Request] = []

    def fetch(request: httpx.Request) -> tuple[int, bytes]:
        sent.append(request)
        return 200, b'{"token": "t"}'

    store = CredentialStore(environ={"REGISTRISH_AUTH_REG_TEST": "u:p"})
    auth = Authenticator(store, fetch=fetch)
    request_auth = auth.for_request(
        origin="https://reg.test", registry="reg.test", scope="repository:a:pull", what="reg.test/a"
    )
    with pytest.raises(AuthError, match="plain-HTTP token service"):
        request_auth.unauthorized('Bearer realm="http://evil.test/token",service="s"')
    assert sent == []
    # Anonymous token requests to such a realm are harmless and allowed.
    anonymous = Authenticator(CredentialStore(), fetch=fetch)
    anonymous.for_request(
        origin="https://reg.test", registry="reg.test", scope="repository:a:pull", what="reg.test/a"
    ).unauthorized('Bearer realm="http://evil.test/token",service="s"')
    assert len(sent) == 1 and "authorization" not in sent[0].headers


def test_challenge_without_usable_scheme() -> None:
    auth = Authenticator(CredentialStore(), fetch=lambda _r: (500, b""))
    request_auth = auth.for_request(origin="https://r", registry="r", scope=None, what="r/x")
    with pytest.raises(AuthError, match="without a usable authentication challenge"):
        request_auth.unauthorized("Negotiate")
