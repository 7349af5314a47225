"""Rate limits and the User-Agent, against the in-process fake registry: the ratelimit-*
headers at -v, the early warning, a 429 of hours ending the run, and registrish's
User-Agent on registry, token and storage requests. (The real upstream: test_hub_e2e.py.)"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from support.fake_registry import FakeRegistry, sha256
from support.memory_upstream import image_manifest

from registrish_lock import USER_AGENT
from registrish_lock.console import Console
from registrish_lock.errors import ExitCode, UpstreamError
from registrish_lock.lock.config import RegistrySettings, load_config
from registrish_lock.lock.resolve import resolve
from registrish_lock.oci.reference import Reference
from registrish_lock.upstream.credentials import CredentialStore
from registrish_lock.upstream.protocols import BlobRequest
from registrish_lock.upstream.ratelimit import (
    RetryPolicy,
    budget_of,
    duration,
    exhausted,
    parse_quota,
)
from registrish_lock.upstream.registry import RegistryClient

REPO = Reference("reg.test", "team/app")
NOW = datetime(2026, 12, 5, 20, 0, tzinfo=timezone.utc)
HUB_429 = (
    b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'
)


def test_quota_headers_parse() -> None:
    assert parse_quota("100;w=21600") == (100, 21600.0)
    assert parse_quota(" 76 ; w=21600") == (76, 21600.0)
    assert parse_quota("100") == (100, None)
    assert parse_quota("many") is None and parse_quota(None) is None
    budget = budget_of({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "97;w=21600"})
    assert budget is not None and budget.describe() == "97 of 100 manifest pulls left (per 6 h)"
    assert budget_of({"ratelimit-limit": "100;w=21600"}) is None  # nothing said about what is left
    assert [duration(s) for s in (21600, 5400, 90, 0)] == ["6 h", "1 h 30 min", "1 min 30 s", "0 s"]


def test_a_429_ends_the_run_only_when_its_wait_is_long() -> None:
    def error(headers: dict[str, str]) -> str | None:
        found = exhausted(
            "hub.test", headers, "library/alpine", " (TOOMANYREQUESTS: x)", now=lambda: NOW
        )
        return None if found is None else found.message

    assert error({"retry-after": "30"}) is None  # slept through, as before
    assert error({}) is None  # a 429 that says nothing: backoff, as before
    assert error({"ratelimit-remaining": "0;w=30"}) is None  # a short window
    assert error({"retry-after": "7200"}) == (
        "registry hub.test is rate-limiting library/alpine (HTTP 429 TOOMANYREQUESTS): "
        "retry after 2026-12-05 22:00 UTC (in 2 h)"
    )
    assert error({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}) == (
        "registry hub.test is rate-limiting library/alpine (HTTP 429 TOOMANYREQUESTS): "
        "retry within 6 h (by 2026-12-06 02:00 UTC)"
    )


class Budgeted:
    """The fake registry's transport, with Docker Hub's headers on manifest answers: the
    budget goes down by one per manifest GET (HEAD is free), then answers 429."""

    def __init__(self, fake: FakeRegistry, remaining: int, limit: int = 100) -> None:
        self.fake, self.remaining, self.limit = fake, remaining, limit

    def headers(self) -> dict[str, str]:
        return {
            "ratelimit-limit": f"{self.limit};w=21600",
            "ratelimit-remaining": f"{self.remaining};w=21600",
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        if "/manifests/" not in request.url.path:
            return self.fake.handle(request)
        if request.method == "GET":
            if self.remaining == 0:
                self.fake.requests.append(request)
                return httpx.Response(429, headers=self.headers(), content=HUB_429)
            self.remaining -= 1
        response = self.fake.handle(request)
        response.headers.update(self.headers())
        return response


@pytest.fixture
def err() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def client_for(err: io.StringIO) -> Iterator[Callable[[httpx.BaseTransport], RegistryClient]]:
    sleeps: list[float] = []
    made: list[RegistryClient] = []

    def make(transport: httpx.BaseTransport) -> RegistryClient:
        client = RegistryClient(
            settings=lambda _host: RegistrySettings(),
            credentials=CredentialStore(environ={}),
            transport=transport,
            retry=RetryPolicy(attempts=3),
            console=Console(verbosity=1, err=err),
            sleep=sleeps.append,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
    assert sleeps == []  # nothing here is worth sleeping through


def test_verbose_shows_the_budget_and_an_exhausted_limit_ends_with_when(
    client_for: Callable[[httpx.BaseTransport], RegistryClient], err: io.StringIO
) -> None:
    fake = FakeRegistry(auth="bearer")
    digest = fake.add_manifest("team/app", "v1", image_manifest("a"))
    budget = Budgeted(fake, remaining=1)
    client = client_for(httpx.MockTransport(budget.handle))
    client.head_manifest(REPO, "v1")
    client.get_manifest(REPO, digest)
    lines = err.getvalue().splitlines()
    assert "debug: rate limit of reg.test: 1 of 100 manifest pulls left (per 6 h)" in lines
    assert "debug: rate limit of reg.test: 0 of 100 manifest pulls left (per 6 h)" in lines
    before = fake.count("reg.test")
    with pytest.raises(UpstreamError) as caught:
        client.get_manifest(REPO, digest)
    assert caught.value.exit_code == ExitCode.UPSTREAM
    assert "(HTTP 429 TOOMANYREQUESTS): retry within 6 h (by " in caught.value.message
    assert fake.count("reg.test") == before + 1  # no retry, no sleep


def test_a_run_planning_more_gets_than_remain_warns_before_the_first(
    client_for: Callable[[httpx.BaseTransport], RegistryClient],
    err: io.StringIO,
    tmp_path: Path,
) -> None:
    fake = FakeRegistry()
    for n in range(3):
        fake.add_manifest("team/app", f"v{n}", image_manifest(f"img-{n}"))
    config = tmp_path / "registrish.toml"
    config.write_text('[[image]]\nsource = "reg.test/team/app"\ntags = ["v0", "v1", "v2"]\n')
    client = client_for(httpx.MockTransport(Budgeted(fake, remaining=2).handle))
    with pytest.raises(UpstreamError, match="rate-limiting"):
        resolve(load_config(config), None, client, console=Console(verbosity=1, err=err))
    lines = err.getvalue().splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning:"))
    assert lines[warning] == (
        "warning: this run needs 3 manifest pulls from reg.test, which allows 2 more per 6 h: "
        "it will stop at the rate limit; log in for a higher limit, or configure a mirror "
        "(README: Docker Hub and rate limits)"
    )
    first_get = next(i for i, line in enumerate(lines) if line.startswith("debug: GET "))
    assert lines[first_get].startswith("debug: GET https://reg.test/v2/team/app/manifests/sha256:")
    assert warning < first_get


def test_every_request_carries_the_user_agent(
    client_for: Callable[[httpx.BaseTransport], RegistryClient], tmp_path: Path
) -> None:
    fake = FakeRegistry(auth="bearer", redirect_blobs=True)
    blob = b"layer bytes"
    fake.add_blob(blob)
    fake.add_manifest("team/app", "v1", image_manifest("a"))
    client = client_for(fake.transport)
    client.head_manifest(REPO, "v1")
    client.fetch_blob(BlobRequest(REPO, sha256(blob), len(blob), tmp_path / "blob"))
    hosts = {r.url.host for r in fake.requests}
    assert hosts == {"reg.test", "auth.test", "cdn.test"}
    assert {r.headers.get("user-agent") for r in fake.requests} == {USER_AGENT}
