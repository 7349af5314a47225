"""A command's time with a bucket tree: open the bucket from boto3's standard
configuration, hold its lease while writing, and count the requests made.

Endpoint, region and credentials come from where every AWS tool reads them
(`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`, `AWS_REGION`, `~/.aws/config`
and `~/.aws/credentials`, instance roles): the config only says `root = "s3://…"`.

A writer (`sync`, `gc`) takes the lease (`bucket.lease`: conditional writes, one writer at a
time, waiting like the local tree lock unless `--no-wait`), then aborts the multipart
uploads a killed run left under the tree's prefix (safe only while holding the lease).
A dry run, the readers (`ls`, `check`) and a `sync` with nothing to write take no lease.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..console import Console
from ..lock.config import Config
from ..serving.routes import Policy
from .client import Boto3Store, open_store
from .state import RESERVED
from .store import BucketStore
from .target import S3Target


@dataclass
class RequestCount:
    """Requests sent to the bucket (every attempt, counted as botocore sends it)."""

    sent: int = 0

    def __call__(self, **_: object) -> None:
        self.sent += 1  # one += under the GIL: the counter needs no lock for an estimate


def fewer_malloc_arenas() -> None:
    """Cap glibc at two malloc arenas for this process (unless MALLOC_ARENA_MAX says).

    glibc gives threads that allocate at the same time arenas of their own, up to 8 per
    core; the MiB-sized chunks a bucket sync's download and upload threads allocate and free
    then stay spread over a dozen arenas: 35-45 MiB of the realistic set's peak RSS
    (BENCHMARKS.md, "Bucket trees"). Call before those threads start; a no-op elsewhere."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        m_arena_max = -8  # <malloc.h>
        ctypes.CDLL(None).mallopt(ctypes.c_int(m_arena_max), ctypes.c_int(2))
    except (ValueError, OSError, AttributeError):  # not glibc
        return


def open_bucket(target: S3Target, *, jobs: int) -> Boto3Store:
    """A client for `target` from boto3's standard configuration."""
    # open_store relaxes boto3's newer default checksums for third-party endpoints (R2,
    # MinIO, SeaweedFS); an endpoint set in the environment is one.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return open_store(target, endpoint_url=endpoint or None, jobs=jobs)


@contextlib.contextmanager
def bucket_tree(
    config: Config,
    console: Console,
    *,
    jobs: int,
    write: bool,
    wait: bool = True,
    holder: str = "registrish",
    client: Boto3Store | None = None,
) -> Iterator[tuple[BucketStore, RequestCount]]:
    """The config's bucket as a tree store, leased for the block when `write` (`holder`
    names the command in the lease, for whoever waits for it). `client`: one an earlier
    block of this run opened (creating one costs a few tenths of a second)."""
    target = config.bucket
    assert target is not None, "a bucket root"
    fewer_malloc_arenas()
    s3 = client if client is not None else open_bucket(target, jobs=jobs)
    count = RequestCount()
    s3.client.meta.events.register("before-send.s3", count)
    policy = Policy(tag_cache_seconds=config.tag_cache_seconds)
    with contextlib.ExitStack() as stack:
        check = None
        if write:
            from .lease import BucketLease
            from .upload import abort_stale_uploads

            lease = stack.enter_context(
                BucketLease(
                    s3.client,
                    target.bucket,
                    target.list_prefix + RESERVED,
                    holder=holder,
                    wait=wait,
                    on_wait=console.info,
                    on_warn=console.warn,
                )
            )
            check = lease.check
            aborted = abort_stale_uploads(s3.client, target.bucket, target.key("v2/"))
            if aborted:
                console.info(f"aborted {aborted} unfinished upload(s) a previous run left")
        store = BucketStore(
            s3, target, policy=policy, console=console, jobs=jobs, between_phases=check
        )
        stack.callback(store.close)
        yield store, count
