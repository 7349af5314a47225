"""A bucket sync SIGKILLed at each kind of request it sends (a proxy in front of SeaweedFS
holds that request, so the kill lands there however fast the machine is) while a puller
pulls the tag the sync moves: no pull sees missing content, every tag the bucket shows
reaches all its content, and the rerun converges. And two syncs started together on one
bucket: one writes, the other waits (then has nothing to do) or fails naming the holder;
their writes never interleave. One SeaweedFS for the module; every test starts processes:
marked slow."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.buckets import layout_config
from testbed.bucketchild import client_for, running_seaweedfs
from testbed.bucketpull import PullLoop, pull
from testbed.images import add_to_index, write_random_image
from testbed.procs import wait_until
from testbed.proxy import CountingProxy, Drop
from testbed.s3 import SeaweedS3, aws_environment

from registrish_lock.cli import main

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LEASE = re.compile(r"/\.registrish/lease$")
WRITES = {"PUT", "POST", "DELETE"}


@dataclass(frozen=True)
class Images:
    """An OCI layout whose `v1` is `old`; `new` (a multipart-sized layer) and `extra`
    are in its blobs, untagged, for a test to tag."""

    layout: Path
    old: dict[str, Any]
    new: dict[str, Any]
    extra: dict[str, Any]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    layout = tmp_path_factory.mktemp("images") / "layout"
    new = write_random_image(layout, "v1", [12 * MiB, 2000], seed=12)  # three 5 MiB parts
    extra = write_random_image(layout, "v2", [4000], seed=13)
    old = write_random_image(layout, "v1", [3000], seed=11)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    add_to_index(layout, old, "v1")
    return Images(layout, old, new, extra)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3: SeaweedS3) -> Path:
    return aws_environment(monkeypatch, tmp_path, s3)


def write_config(tmp: Path, prefix: str, names: tuple[str, ...], tags: tuple[str, ...]) -> Path:
    return layout_config(tmp, f"s3://127/{prefix}", names, tags)


def own_layout(images: Images, tmp: Path) -> Path:
    """A copy of the module's layout for one test to retag (blobs hard-linked, the index
    copied: retagging rewrites it in place)."""
    layout = Path(
        shutil.copytree(images.layout / "blobs", tmp / "layout/blobs", copy_function=os.link)
    ).parent
    for name in ("oci-layout", "index.json"):
        shutil.copyfile(images.layout / name, layout / name)
    return layout


def next_lock(images: Images, tmp: Path, prefix: str) -> Path:
    """Move v1 to the new image, add v2 and repository c, and lock that (--upgrade)."""
    add_to_index(tmp / "layout", images.new, "v1")
    add_to_index(tmp / "layout", images.extra, "v2")
    config = write_config(tmp, prefix, ("a", "b", "c"), ("v1", "v2"))
    assert main(["lock", "-c", str(config), "--upgrade"]) == 0
    return config


def uploads(s3: SeaweedS3, prefix: str) -> list[Any]:
    answer = client_for(s3).list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix + "/")
    return list(answer.get("Uploads", []))


def visible_tags(s3: SeaweedS3, prefix: str) -> list[tuple[str, str]]:
    """(repository, tag) of every tag object the bucket holds under `prefix`."""
    pages = (
        client_for(s3)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=s3.bucket, Prefix=prefix + "/v2/")
    )
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    found = [re.fullmatch(rf"{prefix}/v2/(.+)/manifests/([^/]+)", k) for k in keys]
    return [(m[1], m[2]) for m in found if m and not m[2].startswith("sha256:")]


@dataclass(frozen=True)
class KillPoint:
    """The `nth` request whose method is `method` and whose path matches `path`."""

    name: str
    method: str
    path: str
    nth: int = 1


POINTS = [
    KillPoint("lease-read", "GET", LEASE.pattern),
    KillPoint("lease-probe", "PUT", LEASE.pattern, 2),
    KillPoint("stale-uploads-list", "GET", r"\?uploads&"),
    KillPoint("state-read", "GET", r"/\.registrish/state\.json\.gz$"),
    KillPoint("listing", "GET", r"\?list-type=2"),
    KillPoint("blob-single-put", "PUT", r"/v2/a/blobs/[^?]+$", 2),
    KillPoint("multipart-create", "POST", r"/blobs/[^?]+\?uploads$"),
    KillPoint("multipart-part-2", "PUT", r"/blobs/.+partNumber=2"),
    KillPoint("multipart-complete", "POST", r"/blobs/[^?]+\?uploadId="),
    KillPoint("blob-server-side-copy", "PUT", r"/v2/c/blobs/[^?]+$", 2),
    KillPoint("manifest-put", "PUT", r"/manifests/sha256", 3),
    KillPoint("referrers-put", "PUT", r"/referrers/sha256"),
    KillPoint("tag-moved", "PUT", r"/v2/a/manifests/v1$"),
    KillPoint("tag-added", "PUT", r"/v2/b/manifests/v2$"),
    KillPoint("tags-list", "PUT", r"/tags/list$", 2),
    KillPoint("catalog", "PUT", r"/v2/_catalog$"),
    KillPoint("state-write", "PUT", r"/\.registrish/state\.json\.gz$"),
    KillPoint("lease-release", "DELETE", LEASE.pattern),
]


def hold_at(point: KillPoint, held: threading.Event, release: threading.Event) -> Any:
    """A proxy fault hook: the point's request waits until `release`, then is dropped (it
    never reaches the store: the sync died just before sending it)."""
    seen, lock = [0], threading.Lock()

    def hook(method: str, path: str) -> Drop | None:
        if method != point.method or not re.search(point.path, path):
            return None
        with lock:
            seen[0] += 1
            if seen[0] != point.nth:
                return None
        held.set()
        release.wait(120)
        return Drop()

    return hook


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_sigkill_at_each_kind_of_request_with_a_puller_running(
    point: KillPoint, s3: SeaweedS3, images: Images, env: Path, tmp_path: Path
) -> None:
    prefix = f"kill-{point.name}"
    own_layout(images, tmp_path)
    first = write_config(tmp_path, prefix, ("a", "b"), ("v1",))
    assert main(["lock", "-c", str(first)]) == 0 and main(["sync", "-c", str(first)]) == 0
    config = next_lock(images, tmp_path, prefix)
    base = f"{s3.url}/{prefix}"
    held, release = threading.Event(), threading.Event()
    with (
        PullLoop(base, "a", "v1") as puller,
        CountingProxy(s3.api_url, fault=hold_at(point, held, release)) as proxy,
    ):
        assert puller.wait_pulls(1), "the published tag was never pulled"
        argv = [sys.executable, "-m", "registrish_lock", "sync", "-c", str(config), "-j", "2"]
        child_env = {**os.environ, "AWS_ENDPOINT_URL": f"http://localhost:{proxy.port}"}
        proc = subprocess.Popen(argv, env=child_env, stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: held.is_set() or proc.poll() is not None, timeout=120)
            assert held.is_set(), f"the sync ended ({proc.returncode}) before {point}"
            # a whole pull while the sync stands at this request
            assert puller.wait_pulls(puller.count() + 2), "no pull ended during the hold"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        tags = visible_tags(s3, prefix)
        assert ("a", "v1") in tags
        for name, tag in tags:  # every tag shown reaches all its content
            assert pull(base, name, tag) is not None, (name, tag)
        # the rerun (the killed run's lease names a dead process here: taken over at once)
        assert main(["sync", "-c", str(config), "--no-wait"]) == 0
        assert puller.wait(lambda loop: loop.digests[-1:] == [images.new["digest"]])
    assert puller.failures == [], puller.failures
    assert images.old["digest"] in puller.digests
    assert main(["check", "-c", str(config)]) == 0
    assert uploads(s3, prefix) == []
    assert sorted(visible_tags(s3, prefix)) == [(n, t) for n in "abc" for t in ("v1", "v2")]


#: A sync that announces READY once imported, then starts when a byte arrives on stdin.
GATED_SYNC = (
    "import sys\nfrom registrish_lock.cli import main\n"
    "print('READY', flush=True)\nsys.stdin.read(1)\nsys.exit(main(sys.argv[1:]))\n"
)


class RaceLog:
    """The requests of two processes (each behind its own proxy) in one arrival order.
    The first to send a write outside the lease is the writer; that write waits until the
    other process has shown it is waiting (a second read of the lease) or has exited, so
    the two runs overlap however fast either one is (and until the test has read the lease)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.log: list[tuple[int, str, str]] = []
        self.writer: int | None = None
        self.exited = [False, False]
        #: the test has read the writer's lease (the writer holds it until then)
        self.lease_read = False

    def hook(self, who: int) -> Any:
        def record(method: str, path: str) -> None:
            with self.cond:
                self.log.append((who, method, path))
                self.cond.notify_all()
                if method not in WRITES or LEASE.search(path) or self.writer is not None:
                    return
                self.writer = who
                other = 1 - who
                assert self.cond.wait_for(
                    lambda: (
                        self.lease_read and (self.exited[other] or self.lease_reads(other) >= 2)
                    ),
                    timeout=120,
                )

        return record

    def lease_reads(self, who: int) -> int:
        return sum(1 for w, m, p in self.log if w == who and m == "GET" and LEASE.search(p))

    def ended(self, who: int) -> None:
        with self.cond:
            self.exited[who] = True
            self.cond.notify_all()


@pytest.mark.parametrize("no_wait", [False, True], ids=["wait", "no-wait"])
def test_two_syncs_started_together_never_both_write(
    no_wait: bool, s3: SeaweedS3, images: Images, env: Path, tmp_path: Path
) -> None:
    prefix = "race-no-wait" if no_wait else "race-wait"
    own_layout(images, tmp_path)
    config = next_lock(images, tmp_path, prefix)  # a first sync: every blob to upload
    race = RaceLog()
    argv = [sys.executable, "-c", GATED_SYNC, "sync", "-c", str(config), "--json"]
    argv += ["--no-wait"] if no_wait else []
    outputs: list[tuple[int, str, str]] = [(0, "", ""), (0, "", "")]
    with contextlib.ExitStack() as stack:
        procs = []
        for who in (0, 1):
            proxy = stack.enter_context(CountingProxy(s3.api_url, fault=race.hook(who)))
            child_env = {**os.environ, "AWS_ENDPOINT_URL": f"http://localhost:{proxy.port}"}
            procs.append(
                subprocess.Popen(
                    argv,
                    env=child_env,
                    text=True,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "READY\n"

        def finish(who: int) -> None:
            out, err = procs[who].communicate(input="go", timeout=300)
            outputs[who] = (procs[who].returncode, out, err)
            race.ended(who)

        runs = [threading.Thread(target=finish, args=(who,)) for who in (0, 1)]
        for run in runs:  # both released at once
            run.start()
        with race.cond:
            assert race.cond.wait_for(lambda: race.writer is not None, timeout=120)
        lease = client_for(s3).get_object(Bucket=s3.bucket, Key=f"{prefix}/.registrish/lease")
        lease_id = json.loads(lease["Body"].read())["id"]  # the writer's, while it writes
        with race.cond:
            race.lease_read = True
            race.cond.notify_all()
        for run in runs:
            run.join(timeout=300)
    writer = race.writer
    assert writer is not None
    other = 1 - writer
    code, out, err = outputs[writer]
    assert code == 0 and json.loads(out)["summary"]["fetched_blobs"] == 5, err
    log = race.log
    writes = {w for w, m, p in log if m in WRITES and not LEASE.search(p)}
    assert writes == {writer}, "both processes wrote"
    released = max(i for i, (w, m, p) in enumerate(log) if w == writer and m == "DELETE")
    assert LEASE.search(log[released][2])
    others = [i for i, (w, m, p) in enumerate(log) if w == other and not LEASE.search(p)]
    code, out, err = outputs[other]
    # A sync first plans read-only without the lease (a no-op then needs none), so the
    # other may have read the tree before it asked for the lease; it never wrote (above).
    if no_wait:  # it failed at once, naming the holder, having written nothing
        assert code == 5, (code, err)
        assert "'registrish sync'" in err and lease_id in err, err
        assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err, err
    else:  # it waited for the release, then found nothing to do
        assert code == 0, err
        assert f"waiting for 'registrish sync' (lease id {lease_id})" in err, err
        assert others and max(others) > released, "it did not read the tree after the release"
        done = json.loads(out)
        assert done["summary"]["fetched_blobs"] == 0 and not done["plan"]["pending"]
    assert main(["check", "-c", str(config)]) == 0
    assert uploads(s3, prefix) == []
