"""`lock` → `sync` → `serve` → real pull clients, against a real docker-registry upstream
(tests/testbed). Every test here starts real processes: marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import write_config
from support.trees import verify_tree
from testbed.clients import (
    Containerd,
    Dockerd,
    ctr_pull,
    docker_pull,
    docker_run,
    podman_pull,
    skopeo_copy,
)
from testbed.images import SeededUpstream, push_random_image
from testbed.procs import wait_until
from testbed.proxy import Hold
from testbed.registrish import registrish
from testbed.upstream import CountingProxy, Registry, Respond, get_manifest

from registrish_lock.console import Console
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.treelock import tree_lock

pytestmark = pytest.mark.slow

SEEDED = ("app-oci", "app-docker", "multi", "multi-docker", "team/tools/app")


def test_lock_sync_serve_and_pull_all_four_kinds(
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
    containerd: Containerd,
) -> None:
    config = write_config(
        tmp_path,
        counting_proxy.host,
        [(n, n, "v1") for n in SEEDED],
        platforms='["linux/amd64", "linux/arm64"]',
    )
    registrish(config, "lock")
    assert registrish(config, "sync", "--dry-run", check=False).returncode == 1
    registrish(config, "sync")
    root = tmp_path / "public"
    assert verify_tree(root) > 10
    for name in SEEDED:
        ref = seeded_upstream.get(name, "v1")
        assert (root / "v2" / name / "manifests" / "v1").read_bytes() == (
            root / "v2" / name / "manifests" / ref.digest
        ).read_bytes()

    # a second sync: zero upstream requests, nothing pending
    counting_proxy.reset()
    out = registrish(config, "sync", "--json")
    assert counting_proxy.requests == []
    assert json.loads(out.stdout)["summary"]["upstream_requests"] == 0
    assert registrish(config, "sync", "--dry-run", check=False).returncode == 0

    host = serve_tree(root)
    for name in SEEDED:
        ref = seeded_upstream.get(name, "v1")
        by_tag = skopeo_copy(f"{host}/{name}:v1", tmp_path / f"sk-{name}".replace("/", "_"))
        by_digest = skopeo_copy(
            f"{host}/{name}@{ref.digest}", tmp_path / f"skd-{name}".replace("/", "_")
        )
        if ref.is_index:
            assert by_tag.digest == ref.platforms["linux/amd64"]
            arm = skopeo_copy(
                f"{host}/{name}:v1", tmp_path / f"arm-{name}".replace("/", "_"), arch="arm64"
            )
            assert arm.digest == ref.platforms["linux/arm64"]
        else:
            assert by_tag.digest == ref.digest
        assert by_digest.digest == by_tag.digest
        pulled = ctr_pull(containerd, f"{host}/{name}:v1")
        assert pulled.digest == ref.digest  # containerd keeps the (sparse) index digest
    ctr_arm = ctr_pull(containerd, f"{host}/multi:v1", platform="linux/arm64")
    assert ctr_arm.digest == seeded_upstream.get("multi", "v1").digest


def test_retag_upstream_then_lock_upgrade_and_prune(
    upstream_registry: Registry,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
) -> None:
    work = tmp_path / "work"
    first = push_random_image(
        upstream_registry, "moving", "v1", (40_000, 10_000), seed=1, workdir=work
    )
    push_random_image(upstream_registry, "steady", "v1", (20_000,), seed=7, workdir=work)
    config = write_config(
        tmp_path, counting_proxy.host, [("moving", "moving", "v1"), ("steady", "steady", "v1")]
    )
    registrish(config, "lock")
    registrish(config, "sync")
    root = tmp_path / "public"
    second = push_random_image(
        upstream_registry, "moving", "v1", (40_000, 10_000), seed=2, workdir=work
    )
    assert second.digest != first.digest
    registrish(config, "lock", "--upgrade")
    dry = registrish(config, "sync", "--prune", "--dry-run", "--json", check=False)
    assert dry.returncode == 1  # changes pending
    would = {r["path"] for r in json.loads(dry.stdout)["gc"]["remove"]}
    real = json.loads(registrish(config, "sync", "--prune", "--json").stdout)
    removed = {r["path"] for r in real["gc"]["remove"]}
    # the dry run foretells what the sync's gc removes, old manifest and layers included
    assert would == removed and f"v2/moving/manifests/{first.digest}" in would
    assert (root / "v2/moving/manifests/v1").read_bytes() == (
        root / "v2/moving/manifests" / second.digest
    ).read_bytes()
    # nothing unreferenced remains: the old manifest and its layers are gone
    assert not (root / "v2/moving/manifests" / first.digest).exists()
    for layer in first.layers:
        assert not (root / "v2/moving/blobs" / layer).exists()
        assert not (Layout(root).state / "blobs/sha256" / layer[7:]).exists()
    assert registrish(config, "gc", "--dry-run", check=False).returncode == 0
    verify_tree(root)
    host = serve_tree(root)
    assert skopeo_copy(f"{host}/moving:v1", tmp_path / "pull-moving").digest == second.digest
    assert skopeo_copy(f"{host}/steady:v1", tmp_path / "pull-steady").digest


def test_gc_dry_run_then_real(
    upstream_registry: Registry, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    push_random_image(upstream_registry, "gc-a", "v1", (30_000,), seed=11, workdir=work)
    push_random_image(upstream_registry, "gc-b", "v1", (30_000,), seed=12, workdir=work)
    both = [("gc-a", "gc-a", "v1"), ("gc-b", "gc-b", "v1")]
    config = write_config(tmp_path, counting_proxy.host, both)
    registrish(config, "lock")
    registrish(config, "sync")
    config = write_config(tmp_path, counting_proxy.host, both[:1])
    registrish(config, "lock")
    dry = registrish(config, "gc", "--dry-run", "--json", check=False)
    assert dry.returncode == 1
    doc = json.loads(dry.stdout)
    assert doc["emptied_repositories"] == ["gc-b"] and doc["bytes_freed"] >= 30_000
    assert (tmp_path / "public/v2/gc-b").exists()
    registrish(config, "gc")
    assert not (tmp_path / "public/v2/gc-b").exists()
    assert registrish(config, "gc", "--dry-run", check=False).returncode == 0
    assert registrish(config, "sync", "--dry-run", check=False).returncode == 0


@pytest.mark.parametrize("damage", [False, True], ids=["intact", "damaged-partial"])
def test_sigkill_during_a_large_download_then_rerun_verifies(
    damage: bool, upstream_registry: Registry, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    size = 96 * 1024 * 1024
    big = push_random_image(upstream_registry, "big", "v1", (size,), seed=3, workdir=tmp_path / "w")
    config = write_config(tmp_path, counting_proxy.host, [("big", "big", "v1")])
    registrish(config, "lock")
    tmp = Layout(tmp_path / "public").state / "tmp"
    layer = big.layers[0]
    # The first GET of the layer stops after a quarter of its bytes until released: the
    # sync is killed with a partial download on disk however fast the machine is.
    release = threading.Event()
    held: list[str] = []

    def hold_first_download(method: str, path: str) -> Hold | None:
        if method == "GET" and path.endswith(f"/blobs/{layer}") and not held:
            held.append(path)
            return Hold(after=size // 4, release=release)
        return None

    def partial_sizes() -> list[int]:
        return [p.stat().st_size for p in tmp.glob("*.partial")] if tmp.is_dir() else []

    counting_proxy.fault = hold_first_download
    proc = subprocess.Popen(
        [sys.executable, "-m", "registrish_lock", "sync", "-c", str(config), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at = 0
    try:
        assert wait_until(lambda: any(1 << 20 < s < size // 2 for s in partial_sizes()), 120)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = max(partial_sizes())
    finally:
        proc.wait()
        release.set()
        counting_proxy.fault = None
    assert killed_at, "the download finished before it could be killed"
    assert not (Layout(tmp_path / "public").state / "blobs/sha256" / layer[7:]).exists()
    assert not (tmp_path / "public/v2/big/manifests/v1").exists()
    if damage:  # the kept bytes are wrong (a disk error): the rerun must not blame upstream
        partial = max(tmp.glob("*.partial"), key=lambda p: p.stat().st_size)
        with partial.open("r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))
    counting_proxy.reset()
    registrish(config, "sync")
    assert verify_tree(tmp_path / "public") >= 3
    blob_gets = counting_proxy.count("GET", f"/blobs/{layer}")
    # one resumed request for the rest, not a restart from zero; a damaged partial is found
    # when the blob is complete and fetched once more from byte 0, in the same run
    assert blob_gets == (2 if damage else 1)


def test_corrupt_upstream_bytes_never_land(
    upstream_registry: Registry, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    img = push_random_image(
        upstream_registry, "corrupt", "v1", (50_000,), seed=5, workdir=tmp_path / "w"
    )
    layer = img.layers[0]
    manifest = json.loads(get_manifest(upstream_registry.url, "corrupt", "v1").body)
    (size,) = [x["size"] for x in manifest["layers"] if x["digest"] == layer]
    config = write_config(tmp_path, counting_proxy.host, [("corrupt", "corrupt", "v1")])
    registrish(config, "lock")

    def fault(method: str, path: str) -> Respond | None:
        if method == "GET" and path.endswith(f"/blobs/{layer}"):
            # the right length, the wrong bytes: only the digest check can tell
            return Respond(200, b"\0" * size, {"Content-Type": "application/octet-stream"})
        return None

    counting_proxy.fault = fault
    proc = registrish(config, "sync", check=False)
    assert proc.returncode == 4, proc.stderr
    assert layer in proc.stderr
    root = tmp_path / "public"
    assert not (Layout(root).state / "blobs/sha256" / layer[7:]).exists()
    assert not (root / "v2/corrupt/manifests/v1").exists()
    verify_tree(root)
    counting_proxy.fault = None
    registrish(config, "sync")
    assert verify_tree(root) >= 3


def test_stale_lock_refused_and_tree_lock_serialises_syncs(
    upstream_registry: Registry, counting_proxy: CountingProxy, tmp_path: Path
) -> None:
    push_random_image(upstream_registry, "locky", "v1", (10_000,), seed=9, workdir=tmp_path / "w")
    config = write_config(tmp_path, counting_proxy.host, [("locky", "locky", "v1")])
    registrish(config, "lock")
    layout = Layout(tmp_path / "public")
    console = Console(verbosity=-1)
    with tree_lock(layout, console):
        busy = registrish(config, "sync", "--no-wait", check=False)
        assert busy.returncode == 5 and f"pid {os.getpid()}" in busy.stderr
        waiting = subprocess.Popen(
            [sys.executable, "-m", "registrish_lock", "sync", "-c", str(config)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # said before it blocks: queued behind us
        assert f"waiting for pid {os.getpid()}" in first, first
        assert waiting.poll() is None
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, first + err
    config.write_text(config.read_text().replace('tags = ["v1"]', 'tags = ["v1", "v2"]'))
    stale = registrish(config, "sync", check=False)
    assert stale.returncode == 1 and "registrish lock" in stale.stderr


def test_docker_and_podman_pull_and_run_from_a_synced_tree(
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
    dockerd: Dockerd,
) -> None:
    names = ("app-docker", "multi-docker", "multi")
    config = write_config(tmp_path, counting_proxy.host, [(n, n, "v1") for n in names])
    registrish(config, "lock")
    registrish(config, "sync")
    host = serve_tree(tmp_path / "public")
    for name in names:
        ref = seeded_upstream.get(name, "v1")
        assert docker_pull(dockerd, f"{host}/{name}:v1").digest == ref.digest
        assert podman_pull(f"{host}/{name}:v1", tmp_path / f"pd-{name}").digest == ref.digest
    out = docker_run(dockerd, f"{host}/multi:v1", "echo", "hello", "there")
    assert out.strip() == "hello there"
    arm = podman_pull(f"{host}/multi:v1", tmp_path / "pd-arm", arch="arm64")
    assert arm.digest == seeded_upstream.get("multi", "v1").digest
