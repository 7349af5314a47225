"""`registrish gc`: remove from the tree what the lock no longer reaches."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import ExitCode
from ..lock.config import load_config
from ..lock.lockfile import parse_lock_bytes, read_lock_bytes
from ..tree import record
from ..tree.apply import collect_garbage, write_hosts
from ..tree.gc import GcPlan
from ..tree.storemove import dry_run_layout
from ..tree.treelock import tree_lock
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
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    parser.add_argument(
        "--frozen", action="store_true", help="use the lock even if the config changed"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="fail (exit 5) if another process holds the tree"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    config_bytes = record.config_bytes(args.config)
    config = load_config(args.config)
    lock_bytes = read_lock_bytes(config.lock_path)
    layout = dry_run_layout(config.layout, console) if args.dry_run else config.layout
    key = record.record_key(config_bytes, lock_bytes, layout, config.hosts_dir)
    plan: GcPlan | None = None
    if layout.sync_record.exists():
        with tree_lock(layout, console, wait=not args.no_wait):
            if record.is_clean(layout, key, config.input_hash(), frozen=args.frozen):
                console.debug("the sync record vouches for a clean tree: not scanning it")
                plan = GcPlan()
    if plan is None:
        lock = fresh_lock(
            config, parse_lock_bytes(lock_bytes, config.lock_path), frozen=args.frozen
        )
        with tree_lock(layout, console, wait=not args.no_wait):
            plan = collect_garbage(lock=lock, layout=layout, console=console, dry_run=args.dry_run)
            if not args.dry_run and plan.pending:  # host configs may list what just went
                write_hosts(config, layout, lock, console)
    for line in plan.describe(dry_run=args.dry_run):
        console.result(line)
    console.emit_json({"dry_run": args.dry_run, **plan.to_json()})
    return int(ExitCode.PENDING if args.dry_run and plan.pending else ExitCode.OK)
