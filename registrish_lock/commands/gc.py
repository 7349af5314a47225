"""`registrish gc`: remove from the tree what the lock no longer reaches."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import ExitCode
from ..lock.config import Config, load_config
from ..lock.lockfile import Lock, read_lock
from ..serving.hosts import write_host_configs
from ..tree import record
from ..tree.apply import collect_garbage
from ..tree.gc import GcPlan
from ..tree.gcbatched import collect_local_garbage
from ..tree.storemove import dry_run_layout
from ..tree.treelock import tree_lock
from ..upstream.protocols import DEFAULT_JOBS
from . import add_frozen_option, add_no_wait_option
from .sync import fresh_lock

NAME = "gc"
HELP = "delete what the lock no longer reaches"
DESCRIPTION = """\
Mark everything the lock reaches (from the manifests in the tree; no network), then
sweep unreferenced tags, manifests, blobs, referrers, emptied repositories, store blobs
and stale partial downloads. Nothing the lock reaches is ever removed. --dry-run lists
what would go and the bytes it would free, and exits 1 when something would. When the
last completed sync's record vouches for the tree (same lock and config bytes, no
directory changed since) and that sync saw nothing to collect, gc does not read the tree.
On a bucket root it holds the bucket's lease and deletes objects (tags first, blobs last).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    add_frozen_option(parser)
    add_no_wait_option(parser)


def _gc_bucket(args: argparse.Namespace, config: Config, lock: Lock, console: Console) -> GcPlan:
    """gc on a bucket root, holding its lease: the bucket is listed (and its state object
    read) after the lease is taken, so a sync that just finished is seen whole."""
    from ..bucket.session import bucket_tree

    with bucket_tree(
        config,
        console,
        jobs=DEFAULT_JOBS,
        write=not args.dry_run,
        wait=not args.no_wait,
        holder="registrish gc",
    ) as (store, _):
        return collect_garbage(lock=lock, layout=store, console=console, dry_run=args.dry_run)


def run(args: argparse.Namespace, console: Console) -> int:
    config_bytes = record.config_bytes(args.config)
    config = load_config(args.config)
    if config.bucket is not None:
        lock = fresh_lock(config, read_lock(config.lock_path), frozen=args.frozen)
        plan = _gc_bucket(args, config, lock, console)
    else:
        plan = _gc_local(args, console, config, config_bytes)
    for line in plan.describe(dry_run=args.dry_run):
        console.result(line)
    console.emit_json({"dry_run": args.dry_run, **plan.to_json()})
    return int(ExitCode.PENDING if args.dry_run and plan.pending else ExitCode.OK)


def _gc_local(
    args: argparse.Namespace,
    console: Console,
    config: Config,
    config_bytes: bytes,
) -> GcPlan:
    layout = dry_run_layout(config.layout, console) if args.dry_run else config.layout
    sha256 = record.lock_file_sha256(config.lock_path)  # the lock is never held whole
    key = record.key_of(config_bytes, sha256, layout, config.hosts_dir)
    if layout.sync_record.exists():
        with tree_lock(layout, console, wait=not args.no_wait):
            if record.is_clean(layout, key, config.input_hash(), frozen=args.frozen):
                console.debug("the sync record vouches for a clean tree: not scanning it")
                return GcPlan()
    lock = fresh_lock(config, read_lock(config.lock_path, sha256=sha256), frozen=args.frozen)
    with tree_lock(layout, console, wait=not args.no_wait):
        plan = collect_local_garbage(
            lock=lock, layout=layout, console=console, dry_run=args.dry_run
        )
        if not args.dry_run and plan.pending:  # host configs may list what just went
            write_host_configs(config, layout, lock, console)
    return plan
