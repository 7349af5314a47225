"""Crash consistency (issue 7, item 3): SIGKILL `registrish sync` at random points while a
puller keeps pulling every locked tag from a real `registrish serve` process.

Each round either wipes the tree and starts a cold sync, or first completes a sync, then
moves every upstream tag to the next generation of images (`lock --upgrade`) and syncs
that, so the kill lands while tags go old → new under the puller. Kill delays are drawn
from the measured duration of one sync (seed printed; set REGISTRISH_CRASH_SEED to replay).

A pull is BROKEN when a tag resolves but anything it references is missing, truncated or
hashes to another digest; a tag that does not resolve yet (404) is counted as absent.
Upstream: the real docker-registry of the test bed, behind a CountingProxy that drips
blobs so a sync spends most of its life downloading and writing (where kills matter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.trees import verify_tree
from testbed.images import PushedRef, describe, retag, skopeo_push, write_random_image
from testbed.procs import ServerGroup, wait_until
from testbed.registrish import registrish, start_registrish_serve
from testbed.upstream import (
    DOCKER_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    CountingProxy,
    Drip,
    FaultAction,
    Registry,
    put_manifest,
)

from registrish_lock.cli import main
from registrish_lock.tree.layout import Layout

pytestmark = pytest.mark.slow

KiB, MiB = 1024, 1024 * 1024
#: (our name, tag): what the config locks; each tag moves through GENERATIONS images.
TAGS: tuple[tuple[str, str], ...] = (("crash/a", "stable"), ("crash/b", "multi"))
GENERATIONS = 5
KILLS = 22


# -- upstream images ---------------------------------------------------------------------------
def push_image(
    upstream: Registry, name: str, tag: str, sizes: tuple[int, ...], seed: int, workdir: Path
) -> PushedRef:
    """A random-layer OCI image (its own arch label) pushed as ``name:tag``."""
    arch = "arm64" if tag.endswith("-arm64") else "amd64"
    layout = workdir / "layout"
    local = f"{name.replace('/', '_')}_{tag}"
    write_random_image(layout, local, sizes, seed=seed, architecture=arch)
    skopeo_push(upstream, layout, local, name, tag, preserve_digests=True)
    return describe(upstream, name, tag)


def push_generations(upstream: Registry, workdir: Path) -> None:
    """``crash/a:g<i>``: one image of a 1.5 MiB and a 256 KiB layer. ``crash/b:g<i>``: an
    OCI index over an amd64 and an arm64 image for even ``i``, a single image for odd ``i``
    (so a tag move also changes the manifest kind, and twins of the old kind must go)."""
    for i in range(GENERATIONS):
        push_image(upstream, "crash/a", f"g{i}", (3 * MiB // 2, 256 * KiB), 9000 + i, workdir)
        if i % 2:
            push_image(upstream, "crash/b", f"g{i}", (MiB, 128 * KiB), 9100 + i, workdir)
            continue
        children = []
        for arch in ("amd64", "arm64"):
            tag = f"g{i}-{arch}"
            pushed = push_image(upstream, "crash/b", tag, (MiB, 64 * KiB), 9200 + i, workdir)
            children.append(
                {
                    "mediaType": pushed.media_type,
                    "digest": pushed.digest,
                    "size": pushed.size,
                    "platform": {"architecture": arch, "os": "linux"},
                }
            )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        put_manifest(upstream.url, "crash/b", f"g{i}", json.dumps(index).encode(), OCI_INDEX)


def move_tags(upstream: Registry, generation: int) -> dict[tuple[str, str], str]:
    """Point every locked upstream tag at generation ``generation``; the new digests."""
    return {(name, tag): retag(upstream, name, f"g{generation}", tag) for name, tag in TAGS}


def write_config(tmp: Path, upstream_host: str) -> Path:
    text = '[registry]\nroot = "public"\n\n'
    for name, tag in TAGS:
        text += f'[[image]]\nsource = "{upstream_host}/{name}"\nname = "{name}"\n'
        text += f'tags = ["{tag}"]\n\n'
    text += f'[registries."{upstream_host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    return config


# -- the puller --------------------------------------------------------------------------------
class Broken(Exception):
    """A tag resolved but the image behind it is not complete and correct."""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetch(
    client: httpx.Client, path: str, what: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    try:
        resp = client.get(path, headers=headers)
    except httpx.HTTPError as exc:  # a body cut short by the server lands here too
        raise Broken(f"{what}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise Broken(f"{what}: HTTP {resp.status_code} {resp.text[:200]}")
    return resp


def verified(resp: httpx.Response, digest: str, size: int | None, what: str) -> bytes:
    body = resp.content
    if size is not None and len(body) != size:
        raise Broken(f"{what}: {len(body)} bytes, descriptor says {size}")
    if sha256(body) != digest:
        raise Broken(f"{what}: body hashes to {sha256(body)}, not {digest}")
    header = resp.headers.get("docker-content-digest")
    if header is not None and header != digest:
        raise Broken(f"{what}: Docker-Content-Digest {header} for {digest}")
    return body


def check_manifest_type(resp: httpx.Response, doc: dict[str, Any], what: str) -> str:
    media_type: str = resp.headers.get("content-type", "")
    if doc.get("mediaType", media_type) != media_type:
        raise Broken(f"{what}: served as {media_type!r}, document says {doc.get('mediaType')!r}")
    return media_type


def pull_image(client: httpx.Client, name: str, doc: dict[str, Any], what: str) -> int:
    """Config and layers of one image manifest; the number of blobs verified."""
    blobs = [doc["config"], *doc["layers"]]
    for desc in blobs:
        path = f"/v2/{name}/blobs/{desc['digest']}"
        verified(fetch(client, path, f"{what} blob"), desc["digest"], desc["size"], path)
    return len(blobs)


def pull_tag(client: httpx.Client, name: str, tag: str) -> str | None:
    """Pull ``name:tag`` like a client does; its digest, or None when the tag is not there."""
    accept = {"Accept": MANIFEST_ACCEPT}
    what = f"{name}:{tag}"
    try:
        resp = client.get(f"/v2/{name}/manifests/{tag}", headers=accept)
    except httpx.HTTPError as exc:
        raise Broken(f"{what}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code == 404:
        code = resp.json()["errors"][0]["code"]
        if code not in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"):
            raise Broken(f"{what}: 404 with {code}")
        return None  # not synced yet: absent, not broken
    if resp.status_code != 200:
        raise Broken(f"{what}: HTTP {resp.status_code}")
    digest = sha256(resp.content)
    body = verified(resp, digest, int(resp.headers["content-length"]), what)
    doc = json.loads(body)
    media_type = check_manifest_type(resp, doc, what)
    if media_type in (OCI_INDEX, DOCKER_LIST):
        for child in doc["manifests"]:
            path = f"/v2/{name}/manifests/{child['digest']}"
            sub = fetch(client, path, f"{what} child", accept)
            child_doc = json.loads(verified(sub, child["digest"], child["size"], path))
            check_manifest_type(sub, child_doc, path)
            pull_image(client, name, child_doc, f"{what} → {child['digest'][:19]}")
    else:
        pull_image(client, name, doc, what)
    return digest


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)


class Puller(threading.Thread):
    """Pulls every locked tag from ``base_url`` in a loop until stopped.

    ``current`` maps each tag to the digest the newest lock pins ("new"); any earlier
    generation's digest is "old"; a digest never pushed for that tag is broken. ``gate``
    is held for each pull, so the test can wipe the tree between pulls, never under one.
    """

    def __init__(self, base_url: str, known: dict[tuple[str, str], set[str]]) -> None:
        super().__init__(name="crash-puller", daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=20.0)
        self.known = known
        self.current: dict[tuple[str, str], str] = {}
        self.gate = threading.Lock()
        self.tally = Tally()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for key in TAGS:
                with self.gate:
                    self._pull(key)

    def _pull(self, key: tuple[str, str]) -> None:
        name, tag = key
        try:
            digest = pull_tag(self.client, name, tag)
        except Broken as exc:
            self.tally.counts["broken"] += 1
            self.tally.broken.append(str(exc))
            return
        except Exception as exc:  # anything unexpected is a broken pull too, never lost
            self.tally.counts["broken"] += 1
            self.tally.broken.append(f"{name}:{tag}: {type(exc).__name__}: {exc}")
            return
        if digest is None:
            self.tally.counts["absent"] += 1
            time.sleep(0.005)  # a 404 is cheap: do not spin on it (2 shared cores)
        elif digest == self.current.get(key):
            self.tally.counts["new"] += 1
        elif digest in self.known[key]:
            self.tally.counts["old"] += 1
        else:
            self.tally.counts["broken"] += 1
            self.tally.broken.append(f"{name}:{tag}: resolved to unknown digest {digest}")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)
        self.client.close()


# -- the test ----------------------------------------------------------------------------------
@pytest.fixture
def dripping_proxy(upstream_registry: Registry) -> Iterator[CountingProxy]:
    """The upstream behind a proxy that sends blobs 64 KiB every 3 ms (~20 MiB/s), so a
    sync spends its time downloading and writing rather than starting Python."""

    def drip(method: str, path: str) -> FaultAction | None:
        return Drip(chunk=64 * KiB, delay=0.003) if method == "GET" and "/blobs/" in path else None

    with CountingProxy(upstream_registry.url, fault=drip) as proxy:
        yield proxy


def sync_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "registrish_lock", "sync", "-q", "-c", str(config)]


def timed_sync(config: Path) -> float:
    start = time.monotonic()
    registrish(config, "sync", "-q")
    return time.monotonic() - start


def manifest_files(root: Path) -> int:
    """How many manifest files the tree holds (a new one means the write phase began)."""
    count = 0
    for name, _tag in TAGS:
        with contextlib.suppress(FileNotFoundError):
            count += sum(1 for _ in os.scandir(root / "v2" / name / "manifests"))
    return count


def killed_sync(
    config: Path, delay: float, *, after_first_write_in: Path | None = None
) -> int | None:
    """Start a sync and SIGKILL it (by PID) ``delay`` s after it started or, with
    ``after_first_write_in``, ``delay`` s after a new manifest file appeared in that tree
    (all blobs are in by then: the kill lands among the manifest and tag writes).
    None when killed; 0 when the sync finished first."""
    baseline = manifest_files(after_first_write_in) if after_first_write_in else 0
    proc = subprocess.Popen(sync_argv(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if after_first_write_in is not None:
        while proc.poll() is None and manifest_files(after_first_write_in) == baseline:
            time.sleep(0.0005)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    return 0


def served_state(client: httpx.Client, puller: Puller) -> str:
    """ "new" / "old" / "absent" per tag, as the server answers right now."""
    states = []
    for key in TAGS:
        resp = client.get(f"/v2/{key[0]}/manifests/{key[1]}", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            states.append("absent")
        else:
            states.append("new" if sha256(resp.content) == puller.current[key] else "old")
    return ",".join(states)


def test_sigkilled_syncs_never_serve_a_broken_image(
    upstream_registry: Registry,
    dripping_proxy: CountingProxy,
    servers: ServerGroup,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    seed = int(os.environ.get("REGISTRISH_CRASH_SEED") or random.randrange(1 << 32))
    print(f"crash test seed: {seed} (REGISTRISH_CRASH_SEED={seed} replays the kill points)")
    rng = random.Random(seed)

    push_generations(upstream_registry, tmp_path / "images")
    known = {
        key: {describe(upstream_registry, key[0], f"g{i}").digest for i in range(GENERATIONS)}
        for key in TAGS
    }
    generation = 0
    pinned = move_tags(upstream_registry, generation)
    config = write_config(tmp_path, dripping_proxy.host)
    registrish(config, "lock")
    root = tmp_path / "public"
    # The scale of the kill delays: one full cold sync, and one with nothing to do (start-up,
    # reading the lock and the tree). Kills land between half the latter and the former.
    full = timed_sync(config)
    idle = timed_sync(config)
    print(f"one cold sync: {full:.2f}s; one sync with nothing to do: {idle:.2f}s")
    serving = start_registrish_serve(log_dir=tmp_path, root=root)  # it wants a tree to start on
    servers.add(serving.server)
    url = serving.url
    puller = Puller(url, known)
    puller.current = dict(pinned)
    probe = httpx.Client(base_url=url, timeout=10.0)
    puller.start()
    kills = finished = rounds = 0
    left: Counter[str] = Counter()
    try:
        # A cycle: a cold sync from an empty tree (killed at random); a complete sync, so
        # every tag serves the old image; four tag moves (new images upstream, then
        # `lock --upgrade`), each sync killed — alternately at a random point and just after
        # the write phase began — each starting from whatever the previous kill left.
        while kills < KILLS:
            rounds += 1
            assert rounds < 2 * KILLS, f"seed {seed}: syncs keep finishing before the kill"
            step = rounds % 5
            triggered = step in (3, 0)
            if step == 1:
                with puller.gate:  # never pull from a tree the test itself is wiping
                    shutil.rmtree(root, ignore_errors=True)
            else:
                if step == 2:
                    full = max(full, timed_sync(config))  # also: its duration under load
                generation = (generation + 1) % GENERATIONS
                pinned = move_tags(upstream_registry, generation)
                assert main(["lock", "-q", "-c", str(config), "--upgrade"]) == 0
                puller.current = dict(pinned)
            if triggered:
                delay = rng.uniform(0.0, 0.03)
                outcome = killed_sync(config, delay, after_first_write_in=root)
            else:
                delay = rng.uniform(idle / 2, full)
                outcome = killed_sync(config, delay)
            kills += outcome is None
            finished += outcome is not None
            partials = len(list((Layout(root).state / "tmp").glob("*")))
            state = served_state(probe, puller) + (" +partial" if partials else "")
            left[state] += 1
            print(
                f"round {rounds:2} {'cold' if step == 1 else 'move'} gen {generation} kill "
                f"{'after first write' if triggered else 'at'} +{delay:4.3f}s: "
                f"{'finished first' if outcome == 0 else 'killed'}; tags {state}"
            )
        registrish(config, "sync", "-q")  # the final rerun converges
        pulled = sum(puller.tally.counts.values())
        # some pulls of the final tree too (every tag once more)
        assert wait_until(lambda: sum(puller.tally.counts.values()) >= pulled + len(TAGS))
    finally:
        puller.stop()
        probe.close()

    tally = puller.tally
    print(
        f"crash consistency: seed {seed}, {kills} kills ({finished} syncs finished first), "
        f"{sum(tally.counts.values())} pulls: {tally.counts['old']} old, "
        f"{tally.counts['new']} new, {tally.counts['absent']} absent, "
        f"{tally.counts['broken']} broken; left after the kills: {dict(left)}; "
        f"{time.monotonic() - started:.1f}s"
    )
    assert tally.broken == [], f"seed {seed}: {tally.broken[:10]}"
    assert kills >= KILLS
    assert min(tally.counts["new"], tally.counts["old"], tally.counts["absent"]) > 0, tally
    assert verify_tree(root) > 10
    registrish(config, "check", "--local")
    registrish(config, "check", url, "--deep")
