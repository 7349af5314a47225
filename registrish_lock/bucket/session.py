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
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..console import Console
from ..lock.config import Config
from ..pool import background
from ..serving.routes import Policy
from . import listxml
from .client import Boto3Store, open_store
from .state import RESERVED
from .store import BucketStore, Prefetched
from .store import prefetch as store_prefetch
from .target import S3Target


@dataclass
class RequestCount:
    """Requests sent to the bucket (every attempt, counted as botocore sends it). Exact
    with requests sent from several threads (a no-op's state GET beside its listing)."""

    sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __call__(self, **_: object) -> None:
        with self._lock:
            self.sent += 1


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
    store = open_store(target, endpoint_url=endpoint or None, jobs=jobs)
    listxml.register(store.client)  # the tree reads Key, Size and ETag of its listings
    return store


@dataclass(frozen=True)
class Opened:
    """A bucket client, the count of its requests, and what it read ahead (or None)."""

    s3: Boto3Store
    count: RequestCount
    prefetched: Prefetched | None


def open_early(target: S3Target, *, jobs: int, prefetch: bool) -> Future[Opened]:
    """The bucket opened on a thread of its own while the caller reads the lock: the client
    (about a tenth of a second of botocore imports and model loading), then with `prefetch`
    the state object and the listing (`store.prefetch`: only for a block without lease, as
    a leased one must observe after taking it). Pass the result to `bucket_tree`."""
    fewer_malloc_arenas()  # before the threads start

    def opened() -> Opened:
        s3 = open_bucket(target, jobs=jobs)
        count = RequestCount()
        s3.client.meta.events.register("before-send.s3", count)
        return Opened(s3, count, store_prefetch(s3, target) if prefetch else None)

    return background(opened, "bucket-open")


@contextlib.contextmanager
def bucket_tree(
    config: Config,
    console: Console,
    *,
    jobs: int,
    write: bool,
    wait: bool = True,
    holder: str = "registrish",
    client: Opened | None = None,
) -> Iterator[tuple[BucketStore, RequestCount]]:
    """The config's bucket as a tree store, leased for the block when `write` (`holder`
    names the command in the lease, for whoever waits for it). `client`: what `open_early`
    opened, for one block or several (creating one costs a few tenths of a second); its
    one request count goes on across them."""
    target = config.bucket
    assert target is not None, "a bucket root"
    if client is not None:
        s3, count = client.s3, client.count
    else:
        fewer_malloc_arenas()
        s3 = open_bucket(target, jobs=jobs)
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
            s3,
            target,
            policy=policy,
            console=console,
            jobs=jobs,
            between_phases=check,
            # a leased block observes after taking the lease
            prefetched=client.prefetched if client is not None and not write else None,
        )
        stack.callback(store.close)
        yield store, count
