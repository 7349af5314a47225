"""A second process for the bucket lease and upload tests (`python -m testbed.bucketchild`).

Holding a lease or being killed mid-upload must happen in another process (another PID,
its own renewal thread, a real SIGKILL). The child announces each state on stdout as one
line (``HELD``, ``PART-SENT`` …) and blocks on stdin where the test must act, so the test
waits for a state, never for a duration. Credentials come from the environment
(``child_env``); the endpoint from ``--endpoint``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .procs import LOOPBACK
from .s3 import SeaweedS3, require_boto3, start_seaweedfs

_REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


@contextlib.contextmanager
def running_seaweedfs(tmp: Path) -> Iterator[SeaweedS3]:
    """SeaweedFS for a whole test module (boto3 and `weed` required: see `missing`)."""
    require_boto3()
    server = start_seaweedfs(tmp)
    try:
        yield server
    finally:
        server.stop()


def s3_client(endpoint: str, access_key: str | None = None, secret_key: str | None = None) -> Any:
    """A boto3 client for SeaweedFS's path-style API (the ``Host`` it wants: localhost)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key or os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret_key or os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 3},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def client_for(s3: SeaweedS3) -> Any:
    return s3_client(s3.api_url, s3.access_key, s3.secret_key)


def child_env(s3: SeaweedS3) -> dict[str, str]:
    tests = str(_REPO / "tests")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_REPO), tests]),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "PYTHONUNBUFFERED": "1",
    }


def spawn(s3: SeaweedS3, *args: str) -> subprocess.Popen[str]:
    """Start the child (stdin/stdout piped, text); the caller waits for its lines."""
    assert s3.api_url.startswith(("http://localhost:", f"http://{LOOPBACK}:"))
    return subprocess.Popen(
        [sys.executable, "-m", "testbed.bucketchild", "--endpoint", s3.api_url, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(s3),
        cwd=_REPO,
    )


def expect_line(proc: subprocess.Popen[str], word: str) -> str:
    """Block until the child prints a line starting with `word` (its state); fail with its
    stderr when it exits first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(word):
            return line.strip()
    proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"child exited {proc.returncode} before {word!r}: {stderr[-2000:]}")


# -- the child's side ------------------------------------------------------------------------
def _lease(args: argparse.Namespace) -> int:
    from registrish_lock.bucket.lease import BucketLease
    from registrish_lock.errors import RegistrishError

    lease = BucketLease(
        s3_client(args.endpoint),
        args.bucket,
        args.prefix,
        holder=args.holder,
        ttl=args.ttl,
        wait=not args.no_wait,
        on_wait=lambda m: print(f"WAITING {m}", flush=True),
    )
    try:
        with lease:
            print(f"HELD {lease.holder}", flush=True)
            sys.stdin.readline()  # the test says when to let go
    except RegistrishError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    print("RELEASED", flush=True)
    return 0


def _blocks(size: int, seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (MiB // 32)
    left = size
    while left:
        n = min(left, len(block))
        yield block[:n]
        left -= n


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (kB): `VmRSS` now, `VmHWM`
    its peak. Not `getrusage().ru_maxrss`: Linux keeps that across execve, so a child
    forked from a big pytest process starts with the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} line")


def _upload(args: argparse.Namespace) -> int:
    """Stream `--size` bytes into one key; with `--stop-after-part` announce PART-SENT once
    the first part is in the store and block (the test SIGKILLs us); else finish and print
    as JSON the RSS just before the upload and the peak RSS after it (kB)."""
    from registrish_lock.bucket.upload import BucketSink

    client = s3_client(args.endpoint)
    digest = hashlib.sha256()
    for chunk in _blocks(args.size, b"bucketchild"):
        digest.update(chunk)
    # boto3's first request loads its models: take the baseline after one small PUT
    client.put_object(Bucket=args.bucket, Key=args.key + ".warm", Body=b"warm")
    before = _status_kb("VmRSS")
    sink = BucketSink(
        client,
        args.bucket,
        args.key,
        digest="sha256:" + digest.hexdigest(),
        size=args.size,
        content_type="application/octet-stream",
        cache_control="public, max-age=31536000, immutable",
        what="child upload",
        part_size=args.part_size * MiB if args.part_size else None,
    )
    for chunk in _blocks(args.size, b"bucketchild"):
        sink.write(chunk)
        if args.stop_after_part and sink.written > sink.part_size:
            print("PART-SENT", flush=True)
            sys.stdin.readline()
    sink.finish()
    after = _status_kb("VmHWM")
    print(json.dumps({"before_kb": before, "peak_kb": after, "part": sink.part_size}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="bucketchild")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", default="127")
    sub = parser.add_subparsers(dest="mode", required=True)
    lease = sub.add_parser("lease")
    lease.add_argument("--prefix", required=True)
    lease.add_argument("--holder", required=True)
    lease.add_argument("--ttl", type=float, default=60.0)
    lease.add_argument("--no-wait", action="store_true")
    upload = sub.add_parser("upload")
    upload.add_argument("--key", required=True)
    upload.add_argument("--size", type=int, required=True)
    upload.add_argument("--part-size", type=int, default=0, help="MiB")
    upload.add_argument("--stop-after-part", action="store_true")
    args = parser.parse_args()
    return _lease(args) if args.mode == "lease" else _upload(args)


if __name__ == "__main__":
    sys.exit(main())
