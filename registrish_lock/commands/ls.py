"""`registrish ls`: what the tree serves, from the lock and the tree alone."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import RegistrishError
from ..lock.config import load_config
from ..lock.lockfile import read_lock
from ..serving.listing import list_tree, listing_json, listing_lines
from ..upstream.protocols import DEFAULT_JOBS

NAME = "ls"
HELP = "list what the tree serves: repositories, tags, digests, platforms, sizes, sources"
DESCRIPTION = """\
List every repository and tag the tree serves, read from registrish.lock and the tree
alone (no network, nothing written): the manifest digest a pull by tag gets, the
platforms (os/arch) it holds, the size of pulling every platform, and the upstream
repository it was mirrored from. Tags that parse as versions come newest first (1.0.10
before 1.0.9, v2 before v1), then the others by name: the browse page's order. A tag
the lock names but the tree does not serve yet is marked "(not synced)": run
`registrish sync`. Pass repository names to list only those. On a bucket root the
bucket is read (its listing and state object; a GET per image config).

  registrish ls                      everything
  registrish ls alpine team/tools    only these repositories
  registrish ls --json               one JSON document: repositories[].tags[] with
                                     tag, digest, media_type, size, source, served,
                                     artifact_type and platforms[] (platform, digest, size)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="repositories to list (default: all)"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config)
    lock = read_lock(config.lock_path)
    unknown = sorted(set(args.names) - set(lock.names()))
    if unknown:
        raise RegistrishError(
            f"{config.lock_path}: no repository {', '.join(unknown)} in the lock",
            hint=f"it has: {', '.join(lock.names()) or 'nothing (run `registrish lock`)'}",
        )
    if config.bucket is not None:
        from ..bucket.listing import list_bucket
        from ..bucket.session import bucket_tree

        with bucket_tree(config, console, jobs=DEFAULT_JOBS, write=False) as (store, _):
            listing = list_bucket(store, lock, args.names)
    else:
        listing = list_tree(config.layout, lock, args.names)
    if listing:
        for line in listing_lines(listing):
            console.result(line)
    rows = [row for _, tags in listing for row in tags]
    pending = sum(not row.served for row in rows)
    console.info(
        f"{_count(len(listing), 'repository', 'repositories')}, {_count(len(rows), 'tag', 'tags')}"
        + (f"; {pending} not synced: run `registrish sync`" if pending else "")
    )
    console.emit_json(listing_json(listing))
    return 0


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
