"""`registrish gc`: remove from the tree what the lock no longer reaches."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import ExitCode
from ..tree.apply import collect_garbage, write_hosts
from ..tree.storemove import dry_run_layout
from ..tree.treelock import tree_lock
from . import add_frozen_option, add_no_wait_option
from .sync import load_locked

NAME = "gc"
HELP = "delete what the lock no longer reaches"
DESCRIPTION = """\
Mark everything the lock reaches (from the manifests in the tree; no network), then
sweep unreferenced tags, manifests, blobs, referrers, emptied repositories, store blobs
and stale partial downloads. Nothing the lock reaches is ever removed. --dry-run lists
what would go and the bytes it would free, and exits 1 when something would.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    add_frozen_option(parser)
    add_no_wait_option(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    config, lock = load_locked(args.config, frozen=args.frozen)
    layout = dry_run_layout(config.layout, console) if args.dry_run else config.layout
    with tree_lock(layout, console, wait=not args.no_wait):
        plan = collect_garbage(lock=lock, layout=layout, console=console, dry_run=args.dry_run)
        if not args.dry_run and plan.pending:  # host configs may list what just went
            write_hosts(config, layout, lock, console)
    for line in plan.describe(dry_run=args.dry_run):
        console.result(line)
    console.emit_json({"dry_run": args.dry_run, **plan.to_json()})
    return int(ExitCode.PENDING if args.dry_run and plan.pending else ExitCode.OK)
