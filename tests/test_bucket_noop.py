"""A no-op `sync` into a bucket takes no lease (it writes nothing): 2 bucket requests (the
state object's GET and one LIST) and none upstream, even while another process holds the
lease. Anything to write (an object changed behind registrish's back) still needs the
lease: with it held, `sync --no-wait` exits 5; released, the rerun repairs the bucket.
`check` reports the change and `sync --verify` (always leased) finds a blob replaced by
same-sized bytes. Real processes on SeaweedFS: marked slow."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.buckets import synced_mirror
from testbed.bucketchild import expect_line, spawn
from testbed.images import SeededUpstream
from testbed.procs import free_port
from testbed.s3 import SeaweedS3, aws_environment

from registrish_lock.bucket.state import RESERVED
from registrish_lock.cli import main

pytestmark = pytest.mark.slow

NAME = "app-oci"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture
def config(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    seaweed: SeaweedS3,
    seeded_upstream: SeededUpstream,
) -> Path:
    aws_environment(monkeypatch, tmp_path, seaweed)
    return synced_mirror(tmp_path, f"s3://{seaweed.bucket}", seeded_upstream.host, NAME)


def client() -> Any:
    import boto3

    return boto3.client("s3")  # from the environment aws_environment set


def let_go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()


def test_a_noop_takes_no_lease_and_a_change_still_needs_it(
    config: Path, seaweed: SeaweedS3, capsys: pytest.CaptureFixture[str]
) -> None:
    child = spawn(seaweed, "lease", "--prefix", RESERVED, "--holder", "other-writer")
    try:
        expect_line(child, "HELD")
        code, noop = run_json(capsys, "sync", "-c", str(config), "--no-wait")
        assert code == 0 and not noop["plan"]["pending"], noop
        assert noop["summary"]["upstream_requests"] == 0
        assert noop["bucket_requests"] == 2, noop["bucket_requests"]
        assert gc.isenabled()  # paused for the probe only

        # a tag rewritten behind registrish's back: check fails, sync has work and waits
        # for nobody (--no-wait): exit 5 naming the holder, the bucket untouched
        s3, key = client(), f"v2/{NAME}/manifests/v1"
        original = s3.get_object(Bucket=seaweed.bucket, Key=key)
        s3.put_object(Bucket=seaweed.bucket, Key=key, Body=b"{}", ContentType="text/plain")
        code, report = run_json(capsys, "check", "-c", str(config))
        assert code != 0 and not report["ok"], report
        capsys.readouterr()
        assert main(["sync", "-c", str(config), "--no-wait"]) == 5
        assert "other-writer" in capsys.readouterr().err
        assert s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read() == b"{}"
        let_go(child)
        expect_line(child, "RELEASED")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()

    code, fixed = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and fixed["plan"]["pending"], fixed
    got = s3.get_object(Bucket=seaweed.bucket, Key=key)
    assert got["Body"].read() == original["Body"].read()
    assert got["ContentType"] == original["ContentType"]
    code, report = run_json(capsys, "check", "-c", str(config))
    assert code == 0 and report["ok"], report
    code, again = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and not again["plan"]["pending"] and again["bucket_requests"] == 2


def test_verify_finds_a_blob_replaced_by_same_sized_bytes(
    config: Path, seaweed: SeaweedS3, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=seaweed.bucket, Prefix="v2/")
    blobs = [o for p in pages for o in p.get("Contents", []) if "/blobs/" in o["Key"]]
    victim = max(blobs, key=lambda o: o["Size"])
    good = s3.get_object(Bucket=seaweed.bucket, Key=victim["Key"])["Body"].read()
    s3.put_object(Bucket=seaweed.bucket, Key=victim["Key"], Body=b"x" * victim["Size"])
    # key and size are all a listing shows: the lease-free no-op cannot see it …
    code, noop = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and noop["bucket_requests"] == 2
    # … and --verify, which re-hashes every blob under the lease, repairs it
    code, verified = run_json(capsys, "sync", "-c", str(config), "--verify")
    assert code == 0 and verified["summary"]["fetched_blobs"] >= 1, verified
    assert s3.get_object(Bucket=seaweed.bucket, Key=victim["Key"])["Body"].read() == good


def test_a_lock_error_comes_first_while_the_bucket_is_opened_beside(tmp_path: Path) -> None:
    """The bucket is opened on a thread while the lock is read: a missing lock is still
    the one error reported (exit 2), even with nothing listening at the endpoint."""
    config = tmp_path / "bucket.toml"
    config.write_text('[registry]\nroot = "s3://bucket"\n')
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "registrish_lock", "sync", "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "bucket.lock: no such file" in proc.stderr and "Traceback" not in proc.stderr
