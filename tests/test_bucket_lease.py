"""`bucket.lease` against a real S3 server (SeaweedFS): one writer per bucket tree, taken
with `If-None-Match: *`, renewed and released with `If-Match`; contenders wait or fail
naming the holder; an expired (or dead) holder is taken over; a lost lease is noticed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from testbed.bucketchild import client_for, expect_line, running_seaweedfs, spawn
from testbed.procs import wait_until
from testbed.s3 import SeaweedS3

from registrish_lock.bucket.lease import (
    LEASE_NAME,
    BucketLease,
    LeaseHeldError,
    LeaseLostError,
    UnconditionalStoreError,
)
from registrish_lock.errors import BusyError, ExitCode


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def client(s3: SeaweedS3) -> Any:
    return client_for(s3)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}/.registrish/"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # by PID, whatever state the test left them in
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def read_lease(client: Any, prefix: str) -> tuple[dict[str, Any], str] | None:
    try:
        got = client.get_object(Bucket="127", Key=prefix + LEASE_NAME)
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(got["Body"].read()), got["ETag"]


def lease(client: Any, prefix: str, holder: str = "test", **kw: Any) -> BucketLease:
    return BucketLease(client, "127", prefix, holder=holder, **kw)


def hold_in_child(
    s3: SeaweedS3, children: list[subprocess.Popen[str]], prefix: str, holder: str, *extra: str
) -> subprocess.Popen[str]:
    child = spawn(s3, "lease", "--prefix", prefix, "--holder", holder, *extra)
    children.append(child)
    return child


def let_go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()


def test_taken_held_and_released(client: Any, prefix: str) -> None:
    with lease(client, prefix, "sync pid 1 on host a") as held:
        found = read_lease(client, prefix)
        assert found is not None
        doc, _etag = found
        assert doc["holder"] == "sync pid 1 on host a" and doc["pid"] == os.getpid()
        assert doc["ttl"] == 60.0 and held.conditional
        assert not held.lost
        held.check()
    assert read_lease(client, prefix) is None  # released: DeleteObject If-Match


def test_a_second_writer_fails_naming_the_holder(
    s3: SeaweedS3, client: Any, prefix: str, children: list[subprocess.Popen[str]]
) -> None:
    child = hold_in_child(s3, children, prefix, "sync pid 77 on host ci-1")
    expect_line(child, "HELD")
    with pytest.raises(LeaseHeldError) as caught:
        lease(client, prefix, wait=False).acquire()
    message = str(caught.value)
    assert "'sync pid 77 on host ci-1'" in message and " until " in message
    assert message.startswith(f"s3://127/{prefix}lease: ") and "\n" not in message
    assert isinstance(caught.value, BusyError)
    assert caught.value.exit_code == ExitCode.BUSY  # as the busy local tree lock
    let_go(child)
    expect_line(child, "RELEASED")
    assert child.wait() == 0


def test_two_writers_started_together_never_both_hold(
    s3: SeaweedS3, prefix: str, children: list[subprocess.Popen[str]]
) -> None:
    a = hold_in_child(s3, children, prefix, "writer a", "--no-wait")
    b = hold_in_child(s3, children, prefix, "writer b", "--no-wait")
    # exactly one holds it: the other exits 5 naming the first
    assert a.stdout is not None and b.stdout is not None
    first_a, first_b = a.stdout.readline(), b.stdout.readline()
    held = [p for p, line in ((a, first_a), (b, first_b)) if line.startswith("HELD")]
    failed = [p for p in (a, b) if p not in held]
    assert len(held) == 1 and len(failed) == 1
    assert failed[0].wait() == ExitCode.BUSY
    assert failed[0].stderr is not None
    winner = "writer a" if held[0] is a else "writer b"
    assert f"'{winner}'" in failed[0].stderr.read()
    let_go(held[0])
    expect_line(held[0], "RELEASED")


def test_a_waiting_writer_gets_it_once_released(
    s3: SeaweedS3, client: Any, prefix: str, children: list[subprocess.Popen[str]]
) -> None:
    child = hold_in_child(s3, children, prefix, "first")
    expect_line(child, "HELD")
    waiting = threading.Event()
    messages: list[str] = []
    acquired = threading.Event()

    def on_wait(message: str) -> None:
        messages.append(message)
        waiting.set()

    second = lease(client, prefix, "second", on_wait=on_wait)

    def take() -> None:
        second.acquire()
        acquired.set()

    taker = threading.Thread(target=take)
    taker.start()
    try:
        assert waiting.wait(30)
        assert "'first'" in messages[0]
        assert not acquired.is_set()  # the holder has not let go: still waiting
        let_go(child)
        assert acquired.wait(30)
        taker.join()
        found = read_lease(client, prefix)
        assert found is not None and found[0]["holder"] == "second"
        assert len(messages) == 1  # said once, not at every poll
    finally:
        if acquired.wait(30):
            second.release()
    assert child.wait() == 0


def test_the_wait_is_bounded_by_timeout(client: Any, prefix: str) -> None:
    with lease(client, prefix, "holder"):
        started = time.monotonic()
        with pytest.raises(LeaseHeldError, match="after waiting 1 s"):
            lease(client, prefix, "impatient", timeout=1.0).acquire()
        assert time.monotonic() - started >= 1.0


def plant(client: Any, prefix: str, ttl: float, **doc: Any) -> str:
    """A lease as another machine's writer leaves it (no boot id in common with ours)."""
    body = {"holder": "sync on elsewhere", "host": "elsewhere", "pid": 1, "id": "cafe",
            "boot_id": "another-machine", "pidns": "1", "ttl": ttl, **doc}  # fmt: skip
    answer = client.put_object(
        Bucket="127", Key=prefix + LEASE_NAME, Body=json.dumps(body).encode(), IfNoneMatch="*"
    )
    return str(answer["ETag"])


def test_an_expired_lease_is_taken_over(client: Any, prefix: str) -> None:
    plant(client, prefix, ttl=4)
    with pytest.raises(LeaseHeldError, match="'sync on elsewhere'"):
        lease(client, prefix, wait=False).acquire()  # not expired yet
    warnings: list[str] = []
    waits: list[str] = []
    with lease(client, prefix, "taker", on_wait=waits.append, on_warn=warnings.append):
        found = read_lease(client, prefix)
        assert found is not None and found[0]["holder"] == "taker"
    assert len(waits) == 1  # it waited for the expiry …
    took = "took over the lease of 'sync on elsewhere' (lease id cafe) (it had expired)"
    assert any(took in w for w in warnings), warnings


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(
    s3: SeaweedS3, client: Any, prefix: str, children: list[subprocess.Popen[str]]
) -> None:
    child = hold_in_child(s3, children, prefix, "doomed")
    expect_line(child, "HELD")
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    warnings: list[str] = []
    started = time.monotonic()
    with lease(client, prefix, "rerun", wait=False, on_warn=warnings.append):
        found = read_lease(client, prefix)
        assert found is not None and found[0]["holder"] == "rerun"
    assert time.monotonic() - started < 30  # not the 60 s ttl: its PID is gone here
    assert any("'doomed'" in w and "(its process is gone)" in w for w in warnings)


def test_the_lease_is_renewed(client: Any, prefix: str) -> None:
    etags: list[str] = []

    def renewed_twice() -> bool:
        found = read_lease(client, prefix)
        assert found is not None
        if found[1] not in etags:
            etags.append(found[1])
        return len(etags) >= 3

    with lease(client, prefix, ttl=1.5) as held:
        assert wait_until(renewed_twice, timeout=30)
        assert not held.lost
        held.check()
    assert read_lease(client, prefix) is None


def test_a_lost_lease_is_noticed_and_left_alone(client: Any, prefix: str) -> None:
    with lease(client, prefix, "loser", ttl=1.5) as held:
        # another writer overwrites it (as one that judged it expired would)
        found = read_lease(client, prefix)
        assert found is not None
        client.put_object(
            Bucket="127",
            Key=prefix + LEASE_NAME,
            Body=json.dumps({"holder": "usurper", "id": "beef", "ttl": 60}).encode(),
            IfMatch=found[1],
        )
        assert wait_until(lambda: held.lost, timeout=30)
        with pytest.raises(LeaseLostError, match="'usurper'") as caught:
            held.check()
        assert caught.value.exit_code == ExitCode.BUSY
    after = read_lease(client, prefix)
    assert after is not None and after[0]["holder"] == "usurper"  # not deleted by the loser


class IgnoresConditions:
    """The real client, but `put_object` drops If-None-Match / If-Match on the floor: a store
    without conditional writes."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def put_object(self, **kw: Any) -> Any:
        kw.pop("IfNoneMatch", None)
        kw.pop("IfMatch", None)
        return self.client.put_object(**kw)


def test_a_store_without_conditional_writes_is_refused(client: Any, prefix: str) -> None:
    with pytest.raises(UnconditionalStoreError) as caught:
        lease(IgnoresConditions(client), prefix).acquire()
    message = str(caught.value)
    assert "does not honour conditional writes" in message and "IfNoneMatch" in message
    assert caught.value.exit_code == ExitCode.UPSTREAM and "\n" not in message
    assert read_lease(client, prefix) is None  # its lease removed again


def test_unconditional_writes_can_be_allowed_with_a_warning(client: Any, prefix: str) -> None:
    warnings: list[str] = []
    store = IgnoresConditions(client)
    with lease(store, prefix, allow_unconditional=True, on_warn=warnings.append) as held:
        assert not held.conditional
        assert any("advisory only" in w for w in warnings)
        # advisory: a well-behaved second writer still reads it first and backs off
        with pytest.raises(LeaseHeldError):
            lease(store, prefix, wait=False, allow_unconditional=True).acquire()
    assert read_lease(client, prefix) is None


class RejectsConditionalDelete:
    """The real client, but a DeleteObject with If-Match answers 501 NotImplemented."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def delete_object(self, **kw: Any) -> Any:
        from botocore.exceptions import ClientError

        if "IfMatch" in kw:
            error = {"Error": {"Code": "NotImplemented", "Message": "no"}}
            raise ClientError(error, "DeleteObject")
        return self.client.delete_object(**kw)


def test_without_conditional_delete_release_expires_it_in_place(client: Any, prefix: str) -> None:
    with lease(RejectsConditionalDelete(client), prefix, "first"):
        pass
    found = read_lease(client, prefix)
    assert found is not None and found[0]["released"] is True and found[0]["ttl"] == 0
    with lease(client, prefix, "next", wait=False):  # taken over at once
        after = read_lease(client, prefix)
        assert after is not None and after[0]["holder"] == "next"


class GoesSilent:
    """The real client until `silent` is set; then every PutObject fails as if the network
    were down (the renewals cannot reach the store)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.silent = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def put_object(self, **kw: Any) -> Any:
        if self.silent:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://localhost:1")
        return self.client.put_object(**kw)


def test_a_lease_not_renewed_in_time_counts_as_lost(client: Any, prefix: str) -> None:
    store = GoesSilent(client)
    with lease(store, prefix, "cut off", ttl=1.5) as held:
        store.silent = True
        assert wait_until(lambda: held.lost, timeout=30)
        with pytest.raises(LeaseLostError, match="not renewed for 2 s"):
            held.check()
    # it may be someone else's by now: a lost lease is never deleted by its old holder
    found = read_lease(client, prefix)
    assert found is not None and found[0]["holder"] == "cut off"


def test_an_unreadable_lease_counts_as_held(client: Any, prefix: str) -> None:
    client.put_object(Bucket="127", Key=prefix + LEASE_NAME, Body=b"not json")
    with pytest.raises(
        LeaseHeldError, match="'unknown: the lease object is not registrish's JSON' until"
    ):
        lease(client, prefix, wait=False).acquire()
