"""Shared fixtures: the real-component test bed (see ``tests/testbed``).

Session-scoped (started once, stopped by PID at the end): ``upstream_registry``, ``base_layout``,
``seeded_upstream``, ``containerd``, ``dockerd``. Function-scoped: ``counting_proxy``,
``servers``, ``short_tmp``, ``backoffs`` (real retries, shortened sleeps). Setup times are
printed in the terminal summary.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testbed.clients import Containerd, Dockerd, start_containerd, start_dockerd
from testbed.images import BaseLayout, SeededUpstream, build_base_layout, seed_upstream
from testbed.procs import ServerGroup, short_tmpdir
from testbed.registrish import start_registrish_serve
from testbed.s3 import SeaweedS3, aws_environment, require_boto3, start_seaweedfs
from testbed.upstream import CountingProxy, Registry, start_registry

from registrish_lock.upstream.ratelimit import RetryPolicy, backoff_delay

_TIMINGS: dict[str, float] = {}


class _Timer:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        _TIMINGS[self.name] = time.monotonic() - self.start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        terminalreporter.section("test bed setup")
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{name:<16} {seconds:6.2f} s")


@pytest.fixture(scope="session")
def upstream_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real ``docker-registry`` (distribution 2.8) on 127.0.0.1; empty unless seeded."""
    with _Timer("upstream"):
        registry = start_registry(tmp_path_factory.mktemp("upstream"))
    try:
        yield registry
    finally:
        registry.server.stop()


@pytest.fixture(scope="session")
def base_layout(tmp_path_factory: pytest.TempPathFactory) -> BaseLayout:
    """The session's OCI layout: ``v1`` (amd64), ``v1-arm64`` and the ``multi`` index."""
    with _Timer("base_layout"):
        return build_base_layout(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def seeded_upstream(upstream_registry: Registry, base_layout: BaseLayout) -> SeededUpstream:
    """``upstream_registry`` with every seeded ref pushed; see ``SeededUpstream``. Read-only for tests."""
    with _Timer("seed"):
        return seed_upstream(upstream_registry, base_layout)


@pytest.fixture
def counting_proxy(upstream_registry: Registry) -> Iterator[CountingProxy]:
    """A fresh ``CountingProxy`` in front of ``upstream_registry`` (no faults)."""
    with CountingProxy(upstream_registry.url) as proxy:
        yield proxy


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerGroup]:
    """Register servers started in a test here; all are stopped by PID at teardown."""
    group = ServerGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short ``/tmp/rt-*`` directory (unix sockets, podman runroot); removed afterwards."""
    path = short_tmpdir("rt-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def _daemon_dir() -> Iterator[Path]:
    path = short_tmpdir("ctd-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd(_daemon_dir: Path) -> Iterator[Containerd]:
    """Our own ``containerd`` (CRI off, isolated content per namespace) on a unix socket."""
    with _Timer("containerd"):
        daemon = start_containerd(_daemon_dir / "c")
    try:
        yield daemon
    finally:
        daemon.server.stop()


@pytest.fixture(scope="session")
def dockerd(_daemon_dir: Path, containerd: Containerd) -> Iterator[Dockerd]:
    """A ``dockerd`` using ``containerd``; no networking, own data/exec roots."""
    with _Timer("dockerd"):
        daemon = start_dockerd(_daemon_dir / "d", containerd)
    try:
        yield daemon
    finally:
        daemon.server.stop(timeout=20)


@pytest.fixture
def serve_tree(servers: ServerGroup, tmp_path: Path) -> Callable[[Path], str]:
    """Start `registrish serve` on a tree (with the test's `registrish.toml`, if any);
    returns `127.0.0.1:PORT`. Stopped at teardown."""

    def start(root: Path) -> str:
        serving = start_registrish_serve(
            log_dir=tmp_path, root=root, config=tmp_path / "registrish.toml", quiet=False
        )
        servers.add(serving.server)
        return serving.host

    return start


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server on loopback (bucket `127` at the host root), for publish."""
    require_boto3()
    s3 = start_seaweedfs(tmp_path / "s3")
    try:
        yield s3
    finally:
        s3.stop()


@pytest.fixture
def seaweed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seaweed: SeaweedS3) -> Path:
    """boto3's standard configuration pointed at `seaweed` for this test (`aws_environment`)."""
    return aws_environment(monkeypatch, tmp_path, seaweed)


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every backoff the client computes (Retry-After included), sleep 10 ms instead."""
    asked: list[float] = []

    def fast(policy: RetryPolicy, failures: int, retry_after: float | None, rand: float) -> float:
        asked.append(backoff_delay(policy, failures, retry_after, rand))
        return 0.01

    # The request loop looks `backoff_delay` up in its own module at each retry.
    monkeypatch.setattr("registrish_lock.upstream.http.backoff_delay", fast)
    return asked
