"""`registrish sync`: make the static tree serve exactly what the lock says."""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from ..console import Console
from ..errors import ExitCode, StaleLockError
from ..lock.config import Config, load_config
from ..lock.lockfile import Lock, read_lock
from ..progress import Stats, make_progress
from ..tree import batched, record
from ..tree.apply import LazyUpstream, SyncResult, sync_tree
from ..tree.layout import Layout
from ..tree.plan import Plan
from ..tree.store import TreeStore
from ..tree.storemove import dry_run_layout
from ..tree.treelock import tree_lock
from ..upstream.sources import open_sources
from . import add_frozen_option, add_jobs_option, add_no_wait_option

NAME = "sync"
HELP = "reconcile the static tree with registrish.lock"
DESCRIPTION = """\
Make the tree under [registry].root serve exactly the locked images, downloading only
what is missing (in parallel, verified, resumable). A second sync with nothing to do
makes no upstream request, and when the lock and config are byte for byte those of the
last completed sync and no directory of the tree changed since, it does not even scan
the tree (--verify always re-hashes everything). --dry-run prints the plan and exits 1
when changes are pending, 0 when the tree is up to date.

An index is stored byte-for-byte with only the locked platform manifests beside it: a
client asking for another platform gets 404. Non-distributable layers (with `urls`) are
not fetched; clients fetch them from their urls (-v names them).

With root = "s3://BUCKET[/PREFIX]" the bucket is the tree: blobs stream into it (verified
before they become visible, no local disk), under the bucket's one-writer lease; boto3's
standard configuration (AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws) says where and who.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--prune", action="store_true", help="then remove what the lock no longer reaches (gc)"
    )
    add_jobs_option(parser, "downloads in parallel per upstream registry")
    parser.add_argument(
        "--verify", action="store_true", help="re-hash every file on disk and repair"
    )
    add_frozen_option(parser)
    add_no_wait_option(parser)


def fresh_lock(config: Config, lock: Lock, *, frozen: bool) -> Lock:
    if not frozen and lock.config_hash != config.input_hash():
        raise StaleLockError(
            f"{config.lock_path}: the lock is stale for {config.path} (the config changed)",
            hint="run `registrish lock` to update it, or pass --frozen to use it as is",
        )
    return lock


def _up_to_date(args: argparse.Namespace, console: Console) -> int:
    """The sync record vouches for the tree: report what a no-op sync reports."""
    stats = Stats()
    console.debug("the sync record vouches for the tree: not scanning it (--verify does)")
    if args.dry_run:
        console.result("The tree is up to date.")
    else:
        console.info("up to date: " + stats.summary())
    console.emit_json(
        {
            "dry_run": args.dry_run,
            "plan": Plan().to_json(),
            "gc": None,
            "summary": stats.to_json(),
            "host_configs": [],
            "from_record": True,
        }
    )
    return int(ExitCode.OK)


def run(args: argparse.Namespace, console: Console) -> int:
    config_bytes = record.config_bytes(args.config)
    config = load_config(args.config)
    if config.bucket is not None:
        result, requests = _sync_bucket(args, config, console)
        return _report(args, console, result, [], bucket_requests=requests)
    layout = dry_run_layout(config.layout, console) if args.dry_run else config.layout
    # 26 MB at 100,000 tags: hashed as read, never held; the lock is read again block by
    # block (the bytes it reads must hash to the key), as are its scope's and the copy
    # kept beside the record (`record.changed_scope`, `record.keep_lock`).
    lock_sha256 = record.lock_file_sha256(config.lock_path)
    key = record.key_of(config_bytes, lock_sha256, layout, config.hosts_dir)
    if not (args.verify or args.prune) and layout.sync_record.exists():
        with tree_lock(layout, console, wait=not args.no_wait):
            if record.is_current(layout, key, config.input_hash(), frozen=args.frozen):
                return _up_to_date(args, console)
    lock = fresh_lock(config, read_lock(config.lock_path, sha256=lock_sha256), frozen=args.frozen)
    from ..serving.hosts import check_host_tls, write_host_configs  # not a bucket's: lazily

    check_host_tls(config)  # a bad certificate or key fails before any download
    if "cloudflare" in config.hosts and not args.dry_run:
        from ..serving.hosts.netlify import cloudflare_preflight

        cloudflare_preflight(lock)
    upstream = LazyUpstream(lambda: open_sources(config, console, jobs=args.jobs))
    try:
        with tree_lock(layout, console, wait=not args.no_wait):
            scope = None
            if not (args.dry_run or args.verify or args.prune):
                scope = record.changed_scope(layout, key, config.lock_path)
                if scope is not None:
                    console.debug(
                        f"the sync record vouches for the tree but for {len(scope)} "
                        "repositories: reading only those"
                    )
            if not args.dry_run:
                record.invalidate(layout)
            result = _sync(args, console, lock, layout, upstream, scope=scope)
            # Host configs come last: they may route to anything the tree now holds.
            hosts = (
                []
                if args.dry_run
                else write_host_configs(config, layout, lock, console, changed=scope)
            )
            if not args.dry_run:  # last: everything above completed
                names = {t.name for t in lock.tags}
                paths = record.watched(layout, names, config.hosts_dir)
                # the lock's copy, unless it changed meanwhile (it is checked before use)
                record.keep_lock(layout, config.lock_path, lock_sha256)
                record.write(layout, key, lock.config_hash, paths, clean=result.clean)
    finally:
        upstream.close()
    return _report(args, console, result, hosts)


def _sync(
    args: argparse.Namespace,
    console: Console,
    lock: Lock,
    tree: Layout | TreeStore,
    upstream: LazyUpstream,
    *,
    scope: frozenset[str] | None = None,
) -> SyncResult:
    whole = args.dry_run or args.verify or args.prune  # these plan the whole tree at once
    if isinstance(tree, Layout) and not whole and len(lock.tags) > batched.BATCH_TAGS:
        return batched.sync_in_batches(  # a large local sync: one batch of repositories at a time
            lock=lock,
            layout=tree,
            upstream=upstream,
            console=console,
            progress=make_progress(console),
            jobs=args.jobs,
            scope=scope,
        )
    return sync_tree(
        lock=lock,
        layout=tree,
        upstream=upstream,
        console=console,
        progress=make_progress(console),
        jobs=args.jobs,
        verify=args.verify,
        dry_run=args.dry_run,
        prune=args.prune,
        scope=scope,
    )


@contextlib.contextmanager
def _collector_paused(paused: bool) -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (when `paused`): a no-op bucket
    sync allocates some 10^5 objects that live to its end (botocore's S3 model, the lock,
    the listing, the plan) and hardly any cyclic garbage, yet the collections their
    allocation triggered took a tenth of its CPU. Reference counting still frees the rest.
    Frozen at the end (`gc.freeze`) so that the next collection does not scan them all:
    at most one plan's cyclic garbage stays until the process ends."""
    if not (paused and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class _WorkToDo(Exception):
    """The lease-free probe of a bucket sync would need the upstream."""


def _would_fetch() -> NoReturn:
    raise _WorkToDo


def _sync_bucket(
    args: argparse.Namespace, config: Config, console: Console
) -> tuple[SyncResult, int]:
    """Sync straight into the bucket root, holding its lease; the state object is written
    last. Returns the result and the requests sent to the bucket. A run with nothing to
    write (found without the lease) returns before taking it."""
    from ..bucket.session import bucket_tree, open_early

    assert config.bucket is not None, "a bucket root"
    probing = not (args.dry_run or args.verify or args.prune)
    upstream = LazyUpstream(lambda: open_sources(config, console, jobs=args.jobs))
    rendered = None
    try:
        with _collector_paused(probing):
            # the client, and for a block without lease the state object and the listing,
            # are read on a thread of their own while this one reads the lock
            prefetch = probing or args.dry_run
            opening = open_early(config.bucket, jobs=args.jobs, prefetch=prefetch)
            # the lock's sha256 is the browse page's fingerprint
            lock_sha256 = record.lock_file_sha256(config.lock_path)
            lock = read_lock(config.lock_path, sha256=lock_sha256)
            lock = fresh_lock(config, lock, frozen=args.frozen)
            client = opening.result()
            if probing:
                # A no-op writes nothing, so it needs no lease: plan without it first (saves
                # the lease's 5 requests, the upload cleanup's listing and the renewal
                # thread). Anything to do is planned again under the lease, from a fresh
                # listing. The probe never asks the upstream: a manifest it would fetch
                # means work.
                probe = argparse.Namespace(**{**vars(args), "dry_run": True})
                with bucket_tree(config, console, jobs=args.jobs, write=False, client=client) as (
                    store,
                    requests,
                ):
                    try:
                        result = _sync(probe, console, lock, store, LazyUpstream(_would_fetch))
                    except _WorkToDo:
                        pass
                    else:
                        if not (
                            result.plan.pending
                            or store.browse_writes(lock, lock_sha256).pending  # may learn configs
                            or store.needs_save
                        ):
                            console.debug("nothing to write: the bucket's lease was not taken")
                            return result, requests.sent
                    rendered = store.rendered
        with bucket_tree(
            config,
            console,
            jobs=args.jobs,
            write=not args.dry_run,
            wait=not args.no_wait,
            holder="registrish sync",
            client=client,
        ) as (store, requests):
            result = _sync(args, console, lock, store, upstream)
            if not args.dry_run:  # the browse page, then the state object: last
                # the probe's page, unless this run's writes changed its inputs
                store.write_browse(store.browse_writes(lock, lock_sha256, reuse=rendered))
                store.save_state()
            if store.reread:
                console.debug(f"read {store.reread} object(s) the state object did not vouch for")
    finally:
        upstream.close()
    return result, requests.sent  # the probe's requests included: one count


def _report(
    args: argparse.Namespace,
    console: Console,
    result: SyncResult,
    hosts: list[Path],
    *,
    bucket_requests: int | None = None,
) -> int:
    plan, stats = result.plan, result.stats
    pending = plan.pending or (result.gc is not None and result.gc.pending)
    document = {
        "dry_run": args.dry_run,
        "plan": plan.to_json(),
        "gc": result.gc.to_json() if result.gc is not None else None,
        "summary": stats.to_json(),
        "host_configs": [str(p) for p in hosts],
        "from_record": False,
    }
    if bucket_requests is not None:
        document["bucket_requests"] = bucket_requests
    if args.dry_run:
        for line in plan.describe():
            console.result(line)
        if result.gc is not None and result.gc.pending:
            for line in result.gc.describe(dry_run=True):
                console.result(line)
        if not pending:
            console.result("The tree is up to date.")
        console.emit_json(document)
        return int(ExitCode.PENDING if pending else ExitCode.OK)
    if result.gc is not None and result.gc.pending:
        console.info(result.gc.describe(dry_run=False)[-1])
    changed = plan.pending or result.changed
    console.info(("synced: " if changed else "up to date: ") + stats.summary())
    console.emit_json(document)
    return int(ExitCode.OK)
