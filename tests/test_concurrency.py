"""Concurrent runs on one tree (issue 7, item 5): `sync`, `gc` and `publish` serialise
through the tree lock (`<store>/lock`, flock); `--no-wait` exits 5 while another
process holds it; the lock file a SIGKILLed sync leaves behind blocks nobody.

Real processes against the test bed's docker-registry, behind a CountingProxy that drips
blobs so a sync holds the lock long enough to be watched; SeaweedFS for `publish`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.buckets import bucket_listing
from support.cli import write_config
from support.trees import verify_tree
from testbed.images import PushedRef, push_random_image
from testbed.procs import wait_until
from testbed.registrish import registrish
from testbed.s3 import SeaweedS3
from testbed.treeholder import hold_tree
from testbed.upstream import CountingProxy, Drip, FaultAction, Registry

from registrish_lock.console import Console
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.treelock import tree_lock

pytestmark = pytest.mark.slow

KiB = 1024
EXIT_BUSY = 5
GARBAGE = 1500
#: Words a clean run never prints on stderr.
SCARY = ("waiting", "error", "warning", "stale", "locked", "traceback", "corrupt")


class TimedDrip:
    """Fault hook: blobs drip (``chunk`` bytes every ``delay`` s); every request's arrival
    time is recorded, so a test can tell whose critical section it fell into."""

    def __init__(self, chunk: int = 32 * KiB, delay: float = 0.01) -> None:
        self.drip = Drip(chunk=chunk, delay=delay)
        self.blob_gets: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str) -> FaultAction | None:
        if method != "GET" or "/blobs/" not in path:
            return None
        with self._lock:
            self.blob_gets.append((time.monotonic(), path))
        return self.drip


@pytest.fixture
def dripping() -> TimedDrip:
    return TimedDrip()


@pytest.fixture
def proxy(upstream_registry: Registry, dripping: TimedDrip) -> Iterator[CountingProxy]:
    with CountingProxy(upstream_registry.url, fault=dripping) as p:
        yield p


@pytest.fixture
def image(upstream_registry: Registry, tmp_path: Path) -> PushedRef:
    """``conc/app:v1``: a 1 MiB and a 256 KiB layer (about 2 s through ``dripping``)."""
    return push_random_image(
        upstream_registry, "conc/app", "v1", (1024 * KiB, 256 * KiB), seed=77, workdir=tmp_path
    )


@pytest.fixture
def config(image: PushedRef, proxy: CountingProxy, tmp_path: Path) -> Path:
    path = write_config(tmp_path, proxy.host, [("conc/app", "conc/app", "v1")])
    registrish(path, "lock")
    return path


def start(
    config: Path, *args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    command, *rest = args
    return subprocess.Popen(
        [sys.executable, "-m", "registrish_lock", command, "-c", str(config), *rest],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env is not None else None,
    )


@dataclass
class Watched:
    """A process whose stderr lines are timestamped as they arrive (start it with
    ``stdout=subprocess.DEVNULL``: nobody reads its stdout)."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    exited: float = 0.0

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        self.proc.wait()
        self.exited = time.monotonic()

    def wait(self, timeout: float = 120) -> int:
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"pid {self.proc.pid} still running"
        return self.proc.wait()

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


class LockWatcher(threading.Thread):
    """Polls the lock file (every 0.5 ms) and records each change of its content: the PID
    of the holder, written right after it took the lock, erased before it lets go."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.timeline: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        last = None
        while not self.halt.is_set():
            try:
                text = self.path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text != last:
                self.timeline.append((time.monotonic(), text))
                last = text
            time.sleep(0.0005)

    def holds(self) -> list[tuple[str, float, float]]:
        """``(pid, first seen, last seen)`` per uninterrupted hold, in order."""
        out: list[tuple[str, float, float]] = []
        for (t, pid), nxt in zip(
            self.timeline, [*self.timeline[1:], (time.monotonic(), "")], strict=True
        ):
            if pid:
                out.append((pid, t, nxt[0]))
        return out


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    assert wait_until(predicate, timeout), f"timed out waiting for {what}"


def partial_bytes(tmp: Path) -> int:
    """Bytes of blobs being downloaded into a tree's `tmp` directory."""
    total = 0
    for path in tmp.glob("*.partial"):
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            total += path.stat().st_size
    return total


def test_two_syncs_and_a_gc_started_together_take_turns(
    config: Path, image: PushedRef, dripping: TimedDrip, tmp_path: Path
) -> None:
    layout = Layout(tmp_path / "public")
    # Garbage for gc to sweep: proof that it ran, and a hold long enough to be seen.
    store = layout.state / "blobs/sha256"
    store.mkdir(parents=True)
    for i in range(GARBAGE):
        data = f"garbage {i}".encode()
        (store / hashlib.sha256(data).hexdigest()).write_bytes(data)
    watcher = LockWatcher(layout.lock_file)
    me = str(os.getpid())
    # Hold the lock while the three start, so all three surely contend for it.
    with tree_lock(layout, Console(verbosity=-1)):
        watcher.start()
        runs = {
            "sync 1": Watched(start(config, "sync", stdout=subprocess.DEVNULL)),
            "sync 2": Watched(start(config, "sync", stdout=subprocess.DEVNULL)),
            "gc": Watched(start(config, "gc", stdout=subprocess.DEVNULL)),
        }
        wait_for(
            lambda: all(f"waiting for pid {me}" in r.stderr for r in runs.values()),
            "all three to queue behind the test",
        )
    codes = {name: r.wait() for name, r in runs.items()}
    watcher.halt.set()
    watcher.join()
    assert codes == {"sync 1": 0, "sync 2": 0, "gc": 0}, {n: r.stderr for n, r in runs.items()}

    pids = {str(r.proc.pid): name for name, r in runs.items()}
    holds = [(pids.get(pid, pid), t0, t1) for pid, t0, t1 in watcher.holds()]
    order = [who for who, _, _ in holds]
    print("holds:", [(who, f"{t1 - t0:.3f}s") for who, t0, t1 in holds])
    # One hold each, one after the other: the test, then the three in some order.
    assert order[0] == me and sorted(order[1:]) == ["gc", "sync 1", "sync 2"], order
    # Every blob went over the wire once, all inside one sync's hold: the other sync found
    # the tree complete, and nobody downloaded while another held the tree.
    assert sorted(p for _, p in dripping.blob_gets) == sorted(
        f"/v2/conc/app/blobs/{d}" for d in (*image.layers, image.config or "")
    )
    first_get = min(t for t, _ in dripping.blob_gets)
    (downloader,) = [h for h in holds if h[1] < first_get < h[2]]
    assert downloader[0].startswith("sync")
    assert all(downloader[1] < t < downloader[2] for t, _ in dripping.blob_gets)
    other = "sync 2" if downloader[0] == "sync 1" else "sync 1"
    assert "up to date" in runs[other].stderr and "synced:" in runs[downloader[0]].stderr
    # The stderr lines of each (timestamped on arrival) come after the one before it let go.
    for (_prev, _p0, prev_end), (who, start_t, _) in itertools.pairwise(holds[1:]):
        work = [t for t, line in runs[who].lines if "waiting for" not in line]
        assert all(t >= prev_end - 0.05 for t in work), (who, work, prev_end)
        assert start_t >= prev_end - 0.002
    assert verify_tree(layout.root) >= 3
    assert sorted(f"sha256:{p.name}" for p in store.iterdir()) == sorted(
        (*image.layers, image.config or "")
    )  # the garbage went, nothing the lock reaches did
    registrish(config, "check", "--local")


def test_no_wait_exits_5_while_another_process_holds_the_tree(
    config: Path, tmp_path: Path, upstream_registry: Registry
) -> None:
    layout = Layout(tmp_path / "public")
    # The holder keeps the lock until we let go: nothing here depends on anyone being slow.
    with hold_tree(layout.root) as holder:
        assert layout.lock_file.read_text().strip() == str(holder.pid)
        # `publish` would talk to this "S3 endpoint": it must not get a single request.
        with CountingProxy(upstream_registry.url) as s3_endpoint:
            aws = {
                "AWS_ACCESS_KEY_ID": "test-key",
                "AWS_SECRET_ACCESS_KEY": "test-secret",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            }
            busy = {
                "sync": start(config, "sync", "--no-wait"),
                "gc": start(config, "gc", "--no-wait"),
                "publish": start(
                    config,
                    *("publish", "s3://bucket", "--endpoint-url", s3_endpoint.url, "--no-wait"),
                    env=aws,
                ),
            }
            results = {name: (p.wait(60), p.communicate()[1]) for name, p in busy.items()}
            assert holder.poll() is None
            assert s3_endpoint.requests == []
    for name, (code, err) in results.items():
        assert code == EXIT_BUSY, (name, code, err)
        first = err.splitlines()[0]
        assert first.startswith("error: ") and f"locked by pid {holder.pid}" in first, err
        assert "Traceback" not in err
    assert holder.returncode == 0
    # Let go: the same sync now runs.
    assert "synced:" in registrish(config, "sync", "--no-wait").stderr


def test_the_lock_file_of_a_killed_sync_blocks_nobody(
    config: Path, tmp_path: Path, dripping: TimedDrip
) -> None:
    layout = Layout(tmp_path / "public")
    proc = start(config, "sync")
    partials = layout.tmp
    wait_for(  # killed mid-download: some bytes of a blob are on disk
        lambda: partial_bytes(partials) > 0,
        "the sync to write part of a blob",
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The killed holder's PID is still in the file: a stale lock file, left as is.
    assert layout.lock_file.read_text().strip() == str(proc.pid)
    assert not (layout.root / "v2/conc/app/manifests/v1").exists()

    rerun = registrish(config, "sync", "--no-wait")  # not blocked, and nothing scary said
    assert not any(word in rerun.stderr.lower() for word in SCARY), rerun.stderr
    assert "synced:" in rerun.stderr
    assert layout.lock_file.read_text() == ""  # released cleanly this time
    gc = registrish(config, "gc", "--no-wait")
    assert not any(word in gc.stderr.lower() for word in SCARY), gc.stderr
    assert verify_tree(layout.root) >= 3
    registrish(config, "check", "--local")


def test_publish_waits_for_the_tree_lock(
    config: Path, tmp_path: Path, seaweed: SeaweedS3, dripping: TimedDrip
) -> None:
    dripping.drip = Drip(chunk=1024 * KiB, delay=0)  # no need to be slow here
    registrish(config, "sync")
    layout = Layout(tmp_path / "public")
    aws = {
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    argv = ["publish", f"s3://{seaweed.bucket}", "--endpoint-url", seaweed.api_url]
    argv += ["--addressing-style", "path"]
    with tree_lock(layout, Console(verbosity=-1)):
        busy = start(config, *argv, "--no-wait", env=aws)
        assert busy.wait(60) == EXIT_BUSY, busy.communicate()
        publish = Watched(start(config, *argv, env=aws, stdout=subprocess.DEVNULL))
        wait_for(lambda: f"waiting for pid {os.getpid()}" in publish.stderr, "publish to queue")
        time.sleep(0.5)  # a window to see it stay queued: no event marks "still waiting"
        assert publish.proc.poll() is None
        assert bucket_listing(seaweed) == {}  # nothing uploaded while the tree is held
    assert publish.wait() == 0, publish.stderr
    keys = set(bucket_listing(seaweed))
    assert "v2/conc/app/manifests/v1" in keys and len(keys) >= 5, keys
