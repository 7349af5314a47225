"""Faults injected between registrish and the real upstream (docker-registry behind the
test bed's CountingProxy): server errors, rate limits, resets, truncated, corrupted and
overlong bodies, slow drips, HTML pages, cross-origin blob redirects.

Each fault either heals (the run succeeds after retries with exactly the upstream's bytes)
or stops the run with one clear error line and exit code 3 (upstream) or 4 (integrity);
corrupt bytes never reach a final path, and a rerun after the fault clears converges.
Retries are real; only the backoff sleeps are shortened (and recorded) so the suite stays
fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import assert_clean_failure, run_cli
from support.trees import verify_tree
from testbed.images import SeededUpstream
from testbed.upstream import (
    CountingProxy,
    Drip,
    Drop,
    Extra,
    FaultAction,
    FaultHook,
    Flip,
    Registry,
    Reset,
    Respond,
    Truncate,
    html_page,
    rate_limited,
    redirect,
    start_htpasswd_registry,
)

from registrish_lock.console import Console
from registrish_lock.errors import IntegrityError, UpstreamError
from registrish_lock.lock.config import RegistrySettings
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.oci.reference import Reference
from registrish_lock.tree.layout import Layout
from registrish_lock.upstream.credentials import CredentialStore, env_var_name
from registrish_lock.upstream.protocols import BlobRequest
from registrish_lock.upstream.ratelimit import RetryPolicy
from registrish_lock.upstream.registry import RegistryClient

pytestmark = pytest.mark.slow


class Faults:
    """A fault hook: the first ``times`` requests matching ``method`` and ``path_contains``
    get ``action`` (``times=None``: every one); everything else is forwarded."""

    def __init__(
        self, action: FaultAction, path_contains: str, *, method: str = "GET", times: int | None = 1
    ) -> None:
        self.action, self.path_contains, self.method, self.times = (
            action,
            path_contains,
            method,
            times,
        )
        self.hits = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> FaultAction | None:
        if method != self.method or self.path_contains not in path:
            return None
        with self._lock:
            if self.times is not None and self.hits >= self.times:
                return None
            self.hits += 1
        return self.action


def both(*hooks: FaultHook) -> FaultHook:
    def hook(method: str, path: str) -> FaultAction | None:
        for h in hooks:
            action = h(method, path)
            if action is not None:
                return action
        return None

    return hook


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_for(
    host: str, *, env: dict[str, str] | None = None, attempts: int = 4
) -> RegistryClient:
    return RegistryClient(
        settings=lambda h: RegistrySettings(insecure=True) if h == host else RegistrySettings(),
        credentials=CredentialStore(environ=env or {}),
        console=Console(verbosity=-1, err=io.StringIO()),
        retry=RetryPolicy(attempts=attempts),  # sleeps shortened by `backoffs`
        timeout=10.0,
    )


@dataclass(frozen=True)
class Layer:
    name: str
    digest: str
    size: int


@pytest.fixture(scope="module")
def layer(seeded_upstream: SeededUpstream) -> Layer:
    """The biggest layer of ``app-oci:v1`` (busybox: ~1 MiB), with its manifest size."""
    pushed = seeded_upstream["app-oci:v1"]
    with client_for(seeded_upstream.host) as client:
        doc = json.loads(client.get_manifest(Reference(seeded_upstream.host, "app-oci"), "v1").data)
    biggest = max(doc["layers"], key=lambda d: d["size"])
    assert biggest["digest"] in pushed.layers and biggest["size"] > 100_000
    return Layer("app-oci", biggest["digest"], biggest["size"])


def fetch(proxy: CountingProxy, layer: Layer, dest: Path, attempts: int = 4) -> None:
    with client_for(proxy.host, attempts=attempts) as client:
        client.fetch_blob(
            BlobRequest(Reference(proxy.host, layer.name), layer.digest, layer.size, dest)
        )


# -- RegistryClient.fetch_blob ---------------------------------------------------------------
HEALING = {
    "500": Respond(500),
    "502": Respond(502, b"bad gateway"),
    "503": Respond(503, headers={"Retry-After": "0"}),
    "429-retry-after": rate_limited(2),
    "drop-before-answer": Drop(),
    "reset-mid-body": Reset(after=300_000),
    "truncated-dishonest-length": Truncate(300_000),
    "truncated-honest-length": Truncate(300_000, honest_length=True),
    "slow-drip": Drip(chunk=64 * 1024, delay=0.002),
}


@pytest.mark.parametrize("fault", HEALING.values(), ids=HEALING.keys())
def test_fetch_blob_heals_after_one_fault(
    fault: FaultAction,
    layer: Layer,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    tmp_path: Path,
) -> None:
    hook = Faults(fault, f"/blobs/{layer.digest}")
    counting_proxy.fault = hook
    dest = tmp_path / "blob.partial"
    fetch(counting_proxy, layer, dest)
    assert hook.hits == 1
    assert sha256(dest.read_bytes()) == layer.digest and dest.stat().st_size == layer.size
    gets = [h for m, p, h in counting_proxy.request_headers if m == "GET" and "/blobs/" in p]
    if isinstance(fault, Drip):
        assert len(gets) == 1 and backoffs == []
        return
    assert len(gets) == 2, gets
    if isinstance(fault, Truncate):
        # The 300,000 bytes that did arrive are kept: the retry asks only for the rest.
        assert gets[1].get("range") == "bytes=300000-", gets[1]
    if isinstance(fault, Reset):
        # An RST discards what sat unread in the client's socket buffer: some prefix survives.
        start = int(gets[1].get("range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= 300_000, gets[1]
    if isinstance(fault, Respond) and fault.status == 429:
        assert backoffs == [2.0]  # Retry-After honoured, not the exponential guess


CORRUPTING = {
    "flipped-first-byte": Flip(0),
    "flipped-last-byte": Flip(-1),
    "extra-bytes": Extra(),
}


@pytest.mark.parametrize("fault", CORRUPTING.values(), ids=CORRUPTING.keys())
def test_fetch_blob_refuses_corrupt_bytes_and_deletes_them(
    fault: FaultAction,
    layer: Layer,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    tmp_path: Path,
) -> None:
    counting_proxy.fault = Faults(fault, "/blobs/", times=None)
    dest = tmp_path / "blob.partial"
    with pytest.raises(IntegrityError) as info:
        fetch(counting_proxy, layer, dest)
    assert layer.digest in info.value.message and "\n" not in info.value.message
    assert info.value.exit_code == 4
    assert not dest.exists()

    counting_proxy.fault = None  # the rerun after the fault clears converges
    fetch(counting_proxy, layer, dest)
    assert sha256(dest.read_bytes()) == layer.digest


def test_fetch_blob_ignores_bytes_past_content_length(
    layer: Layer, counting_proxy: CountingProxy, backoffs: list[float], tmp_path: Path
) -> None:
    """Garbage after the announced length is not part of the answer: never read, never kept."""
    counting_proxy.fault = Faults(Extra(b"\x00" * 1000, honest_length=False), "/blobs/")
    dest = tmp_path / "blob.partial"
    fetch(counting_proxy, layer, dest)
    assert dest.stat().st_size == layer.size and sha256(dest.read_bytes()) == layer.digest


def test_fetch_blob_persistent_503_stops_with_one_line(
    layer: Layer, counting_proxy: CountingProxy, backoffs: list[float], tmp_path: Path
) -> None:
    counting_proxy.fault = Faults(Respond(503), "/blobs/", times=None)
    with pytest.raises(UpstreamError) as info:
        fetch(counting_proxy, layer, tmp_path / "blob.partial", attempts=3)
    assert info.value.message == (
        f"registry {counting_proxy.host} answered HTTP 503 for {counting_proxy.host}/app-oci"
    )
    assert info.value.exit_code == 3 and len(backoffs) == 2
    assert counting_proxy.count("GET", "/blobs/") == 3


def test_fetch_blob_persistent_truncation_keeps_only_a_resumable_partial(
    layer: Layer, counting_proxy: CountingProxy, backoffs: list[float], tmp_path: Path
) -> None:
    """Every answer stops at the same short length: the client gives up with exit 3 and
    keeps the verified-so-far prefix in the partial file (never a final path) to resume."""
    counting_proxy.fault = Faults(Truncate(200_000, honest_length=True), "/blobs/", times=None)
    dest = tmp_path / "blob.partial"
    with pytest.raises(UpstreamError, match="connection closed after"):
        fetch(counting_proxy, layer, dest, attempts=3)
    counting_proxy.fault = None
    fetch(counting_proxy, layer, dest)
    assert sha256(dest.read_bytes()) == layer.digest


# -- cross-origin redirect: credentials stay home --------------------------------------------
@pytest.fixture
def private_registry(seeded_upstream: SeededUpstream, tmp_path: Path) -> Iterator[Registry]:
    """htpasswd-protected docker-registry over the seeded storage (alice / s3cret-pw)."""
    reg = start_htpasswd_registry(
        tmp_path / "private", seeded_upstream.registry.root, user="alice", password="s3cret-pw"
    )
    try:
        yield reg
    finally:
        reg.server.stop()


def test_blob_redirect_to_another_origin_carries_no_authorization(
    private_registry: Registry,
    seeded_upstream: SeededUpstream,
    layer: Layer,
    backoffs: list[float],
    tmp_path: Path,
) -> None:
    # The registry (origin A, needs credentials) redirects the blob to a "CDN" (origin B,
    # anonymous, same storage), as Docker Hub does with its blob storage.
    with (
        CountingProxy(private_registry.url) as registry_side,
        CountingProxy(seeded_upstream.url) as cdn,
    ):
        path = f"/v2/{layer.name}/blobs/{layer.digest}"
        registry_side.fault = Faults(redirect(cdn.url + path + "?sig=abc"), path)
        env = {env_var_name(registry_side.host): "alice:s3cret-pw"}
        dest = tmp_path / "blob.partial"
        repo = Reference(registry_side.host, layer.name)
        with client_for(registry_side.host, env=env) as client:
            client.get_manifest(repo, "v1")  # as sync does: learns the Basic challenge
            client.fetch_blob(BlobRequest(repo, layer.digest, layer.size, dest))
        assert sha256(dest.read_bytes()) == layer.digest
        home = [h for m, p, h in registry_side.request_headers if p == path]
        away = cdn.request_headers
    # The credentials did go to the registry itself, with the very request that was redirected.
    assert len(home) == 1 and home[0]["authorization"].startswith("Basic "), home
    assert [(m, p) for m, p, _h in away] == [("GET", path + "?sig=abc")]
    assert all("authorization" not in h for _m, _p, h in away), away


# -- `registrish lock` through the CLI ----------------------------------------------------------
def write_config(tmp_path: Path, host: str) -> Path:
    config = tmp_path / "registrish.toml"
    config.write_text(
        f'[[image]]\nsource = "{host}/app-oci"\ntags = ["v1"]\n\n'
        f'[[image]]\nsource = "{host}/multi"\ntags = ["v1"]\n\n'
        f'[registries."{host}"]\ninsecure = true\n'
    )
    return config


LOCK_HEALING = {
    "500-on-head": (Respond(500), "HEAD", "/manifests/v1"),
    "502-on-get": (Respond(502), "GET", "/manifests/sha256:"),
    "503-on-get": (Respond(503), "GET", "/v2/app-oci/manifests/"),
    "429-retry-after": (rate_limited(1), "HEAD", "/manifests/"),
    "reset-mid-manifest": (Reset(after=40), "GET", "/manifests/sha256:"),
    "truncated-manifest-dishonest-length": (Truncate(40), "GET", "/manifests/sha256:"),
    "drop": (Drop(), "GET", "/manifests/sha256:"),
    "slow-drip": (Drip(chunk=16, delay=0.005), "GET", "/manifests/sha256:"),
}


@pytest.mark.parametrize(("fault", "method", "where"), LOCK_HEALING.values(), ids=LOCK_HEALING)
def test_lock_heals_after_faults(
    fault: FaultAction,
    method: str,
    where: str,
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook = Faults(fault, where, method=method, times=2)
    counting_proxy.fault = hook
    config = write_config(tmp_path, counting_proxy.host)
    code, _out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert code == 0, err
    assert hook.hits >= 1
    lock = read_lock(tmp_path / "registrish.lock")
    got = {t.name: t.digest for t in lock.tags}
    assert got == {
        "app-oci": seeded_upstream["app-oci:v1"].digest,
        "multi": seeded_upstream["multi:v1"].digest,
    }
    if isinstance(fault, Respond) and fault.status == 429:
        assert 1.0 in backoffs


LOCK_FAILING = {
    # (fault hook, exit code, what the one error line must say)
    "html-page-for-every-manifest": (
        both(
            Faults(html_page(), "/manifests/", method="HEAD", times=None),
            Faults(html_page(), "/manifests/", times=None),
        ),
        3,
        "/app-oci:v1 with text/html, not a manifest",
    ),
    "flipped-manifest": (
        Faults(Flip(10), "/manifests/sha256:", times=None),
        4,
        "/app-oci@sha256:",
    ),
    "extra-bytes-after-manifest": (
        Faults(Extra(b" "), "/manifests/sha256:", times=None),
        4,
        "/app-oci@sha256:",
    ),
    "truncated-manifest-honest-length": (
        Faults(Truncate(40, honest_length=True), "/manifests/sha256:", times=None),
        4,
        "/app-oci@sha256:",
    ),
    "persistent-503": (
        Faults(Respond(503), "/manifests/", method="HEAD", times=None),
        3,
        "answered HTTP 503 for",
    ),
    "html-404-page": (
        Faults(html_page(404), "/manifests/", method="HEAD", times=None),
        3,
        "tag 'v1' not found in",
    ),
}


@pytest.mark.parametrize(("hook", "code", "says"), LOCK_FAILING.values(), ids=LOCK_FAILING)
def test_lock_stops_cleanly_and_writes_nothing(
    hook: FaultHook,
    code: int,
    says: str,
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    counting_proxy.fault = hook
    config = write_config(tmp_path, counting_proxy.host)
    got, out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert_clean_failure(got, err, (code,))
    assert err.startswith("error: ") and says in err.splitlines()[0], err
    assert counting_proxy.host in err.splitlines()[0], err
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registrish.toml"]

    counting_proxy.fault = None  # the rerun after the fault clears converges
    code, _out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert code == 0, err
    assert {t.digest for t in read_lock(tmp_path / "registrish.lock").tags} == {
        seeded_upstream["app-oci:v1"].digest,
        seeded_upstream["multi:v1"].digest,
    }


# -- `registrish sync` through the CLI ----------------------------------------------------------
@pytest.fixture
def locked(
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    config = write_config(tmp_path, counting_proxy.host)
    code, _out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert code == 0, err
    counting_proxy.reset()
    return config


def final_blob_digests(root: Path) -> set[str]:
    return {p.name for p in (root / "v2").rglob("blobs/sha256:*") if p.is_file()}


SYNC_HEALING = {
    "503": Respond(503),
    "429": rate_limited(1),
    "reset-mid-body": Reset(after=100_000),
    "truncated": Truncate(100_000),
    "drop": Drop(),
}


@pytest.mark.parametrize("fault", SYNC_HEALING.values(), ids=SYNC_HEALING)
def test_sync_heals_after_blob_faults(
    fault: FaultAction,
    locked: Path,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    layer: Layer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    counting_proxy.fault = Faults(fault, f"/blobs/{layer.digest}", times=2)
    code, _out, err = run_cli("-c", str(locked), "sync", capsys=capsys)
    assert code == 0, err
    root = locked.parent / "public"
    assert verify_tree(root) > 5
    assert layer.digest in final_blob_digests(root)
    code, _out, err = run_cli("-c", str(locked), "check", "--local", capsys=capsys)
    assert code == 0, err


SYNC_CORRUPTING = {
    "flipped-layer": (Flip(1234), 4),
    "extra-bytes": (Extra(), 4),
    "truncated-honest-length": (Truncate(1000, honest_length=True), 3),
}


@pytest.mark.parametrize(("fault", "code"), SYNC_CORRUPTING.values(), ids=SYNC_CORRUPTING)
def test_sync_never_publishes_corrupt_blobs_and_a_rerun_converges(
    fault: FaultAction,
    code: int,
    locked: Path,
    counting_proxy: CountingProxy,
    backoffs: list[float],
    layer: Layer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    counting_proxy.fault = Faults(fault, f"/blobs/{layer.digest}", times=None)
    got, _out, err = run_cli("-c", str(locked), "sync", capsys=capsys)
    assert_clean_failure(got, err, (code,))
    assert f"blob {layer.digest}" in err
    root = locked.parent / "public"
    verify_tree(root)  # whatever did land hashes to its name
    assert layer.digest not in final_blob_digests(root)
    store = Layout(root).state / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    assert not store.exists()
    # No tag may point at an image whose layer is missing (tags are written last).
    assert not (root / "v2" / "app-oci" / "manifests" / "v1").exists()

    counting_proxy.fault = None
    code, _out, err = run_cli("-c", str(locked), "sync", capsys=capsys)
    assert code == 0, err
    assert verify_tree(root) > 5 and layer.digest in final_blob_digests(root)
    code, _out, err = run_cli("-c", str(locked), "check", "--local", capsys=capsys)
    assert code == 0, err
