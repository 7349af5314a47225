"""Against an upstream built like Docker Hub (testbed.hub): token auth with RS256 JWTs, S3
storage answering blob GETs with 307s to presigned URLs on another origin, public and private
repositories. `lock` makes one GET per manifest digest, `outdated` runs its HEADs in
parallel, every request says it is registrish, and rate-limit headers are read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from testbed.hub import Hub, start_hub
from testbed.images import BaseLayout, push_random_image, retag, skopeo_push
from testbed.proxy import AddHeaders, CountingProxy, FaultAction, Respond
from testbed.registrish import registrish

from registrish_lock import USER_AGENT
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.upstream.credentials import env_var_name

pytestmark = pytest.mark.slow

SHARED_TAGS = [f"t{n:02d}" for n in range(50)]
HUB_429 = (
    b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate '
    b'limit. You may increase the limit by authenticating and upgrading"}]}'
)


@dataclass(frozen=True)
class Seeded:
    hub: Hub
    shared: str  # the one digest of library/shared's 50 tags


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, base_layout: BaseLayout) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("hub")
    hub = start_hub(tmp, users={"alice": "alice-pw"}, private={"private/app"})
    try:
        seeder = hub.seeder
        shared = push_random_image(seeder, "library/shared", SHARED_TAGS[0], seed=15, workdir=tmp)
        for tag in SHARED_TAGS[1:]:
            retag(seeder, "library/shared", SHARED_TAGS[0], tag)
        lo = base_layout
        skopeo_push(seeder, lo.path, lo.index_tag, "library/multi", "v1", all_platforms=True)
        retag(seeder, "library/multi", "v1", "latest")
        push_random_image(seeder, "private/app", "v1", (2048,), seed=16, workdir=tmp)
        hub.seeder.server.stop()  # seeded: from here on only registrish talks to the hub
        yield Seeded(hub, shared.digest)
    finally:
        hub.stop()


@pytest.fixture
def front(seeded: Seeded) -> Iterator[CountingProxy]:
    """What the registry sees (and where faults are added): a proxy in front of it."""
    seeded.hub.storage.reset()
    seeded.hub.tokens.requests.clear()
    with CountingProxy(seeded.hub.registry.url) as proxy:
        yield proxy


def write_config(tmp_path: Path, host: str) -> Path:
    images = [("library/shared", SHARED_TAGS), ("library/multi", ["v1", "latest"])]
    images.append(("private/app", ["v1"]))
    doc = {
        "image": [{"source": f"{host}/{repo}", "tags": tags} for repo, tags in images],
        "registries": {host: {"insecure": True}},
    }
    config = tmp_path / "registrish.toml"
    config.write_text(tomli_w.dumps(doc))
    return config


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch, front: CountingProxy) -> None:
    """Credentials for the private repository (the registrish subprocesses inherit them)."""
    monkeypatch.setenv(env_var_name(front.host), "alice:alice-pw")


def timed(config: Path, *args: str, check: bool = True) -> tuple[float, str]:
    started = time.monotonic()
    proc = registrish(config, *args, check=check)
    return time.monotonic() - started, proc.stderr


def test_one_get_per_digest_parallel_outdated_and_an_honest_user_agent(
    seeded: Seeded, front: CountingProxy, alice: None, tmp_path: Path
) -> None:
    hub = seeded.hub
    config = write_config(tmp_path, front.host)
    lock_seconds, _ = timed(config, "lock")
    locked = read_lock(config.with_suffix(".lock"))
    assert {t.digest for t in locked.tags if t.name == "library/shared"} == {seeded.shared}
    # 50 tags, one digest: 50 free HEADs (those sent before the first token came back were
    # answered 401 and sent again), one GET of the manifest, none by tag
    assert 50 <= front.count("HEAD", "/v2/library/shared/manifests/") <= 50 + 8
    assert front.count("GET", "/v2/library/shared/manifests/") == 1
    assert front.count("GET", f"/v2/library/shared/manifests/{seeded.shared}") == 1
    # the index two tags share, and its two children: once each
    assert front.count("GET", "/v2/library/multi/manifests/") == 3
    lock_requests = len(front.requests)

    front.reset()
    outdated_seconds, err = timed(config, "outdated", "--jobs", "8")
    assert "53 tags: 53 current" in err, err
    assert front.count("GET", "/manifests/") == 0
    assert len(front.requests) <= lock_requests
    assert front.max_in_flight > 1, "outdated sent its HEADs one at a time"
    print(
        f"lock {lock_seconds:.2f} s ({lock_requests} requests at the registry), "
        f"outdated {outdated_seconds:.2f} s ({len(front.requests)} requests, "
        f"{front.max_in_flight} at once)"
    )

    _, err = timed(config, "sync")
    blob_gets = front.count("GET", "/blobs/")
    assert blob_gets > 0
    presigned = [r for r in hub.storage.request_headers if "X-Amz-Signature=" in r[1]]
    assert len(presigned) == blob_gets  # every blob GET went on to storage, signed
    assert all("authorization" not in headers for _, _, headers in presigned)

    # every request registrish made, wherever it went, says who it is
    seen = {
        "registry": front.request_headers,
        "token server": hub.tokens.requests,
        "storage": presigned,
    }
    for where, requests in seen.items():
        assert requests, where
        agents = {headers.get("user-agent") for _, _, headers in requests}
        assert agents == {USER_AGENT}, (where, agents)
    # a second lock and sync of the same content cost no manifest GET at all
    front.reset()
    config.with_suffix(".lock").unlink()
    timed(config, "lock")
    assert front.count("GET", "/manifests/") == 0, front.requests


class RateLimited:
    """Docker Hub's rate limiting, added by the proxy: ratelimit-* headers on manifest
    answers, one pull less per manifest GET, and a 429 without Retry-After at zero."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.refused = 0
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        return {
            "ratelimit-limit": "100;w=21600",
            "ratelimit-remaining": f"{self.remaining};w=21600",
        }

    def __call__(self, method: str, path: str) -> FaultAction | None:
        if "/manifests/" not in path:
            return None
        with self._lock:
            if method == "GET":
                if self.remaining == 0:
                    self.refused += 1
                    return Respond(
                        429, HUB_429, {"Content-Type": "application/json", **self.headers()}
                    )
                self.remaining -= 1
            return AddHeaders(self.headers())


def test_rate_limit_headers_give_the_budget_a_warning_and_a_one_line_429(
    seeded: Seeded, front: CountingProxy, alice: None, tmp_path: Path
) -> None:
    limit = RateLimited(remaining=2)
    front.fault = limit
    config = write_config(tmp_path, front.host)
    proc = registrish(config, "lock", "-v", check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    host = front.host
    assert f"debug: rate limit of {host}: 2 of 100 manifest pulls left (per 6 h)" in lines
    # three distinct top-level manifests (shared, the index, private) against two pulls left
    warning = lines.index(
        f"warning: this run needs 3 manifest pulls from {host}, which allows 2 more per 6 h: "
        "it will stop at the rate limit; log in for a higher limit, or configure a mirror "
        "(README: Docker Hub and rate limits)"
    )
    first_get = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("debug: GET ") and "/manifests/" in line
    )
    assert warning < first_get
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: registry {host} is rate-limiting ")
    assert "(HTTP 429 TOOMANYREQUESTS): retry within 6 h (by " in errors[0]
    assert lines[-1].startswith("hint: log in for a higher limit")
    assert not any("retry 1/" in line for line in lines)  # no sleeping through it
    assert 1 <= limit.refused <= 8  # what was in flight at once, then the run stopped
    assert not config.with_suffix(".lock").exists()
