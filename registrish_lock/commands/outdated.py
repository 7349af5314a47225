"""`registrish outdated`: which pins moved upstream and which new tags the selectors match."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import ExitCode
from ..lock.config import check_local_sources, load_config
from ..lock.lockfile import read_lock
from ..lock.outdated import STATES, outdated
from ..upstream.sources import open_sources
from . import add_jobs_option

NAME = "outdated"
HELP = "show locked tags that moved upstream and new tags the selectors match"
DESCRIPTION = """\
Compare registrish.lock with what the upstream registries serve now, using only
HEAD requests (free of Docker Hub's pull limit) and tag listings. Nothing is written.

states:
  moved    the upstream tag now points at another digest
  new      the selectors match a tag the lock does not have yet
  gone     a locked tag no longer exists upstream
  dropped  a locked tag the config no longer selects
  current  unchanged

Exits 1 when anything is not current, so a CI job can open an update pull request
(`registrish lock --upgrade` then does the update).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all", action="store_true", help="also list current tags (default: only outdated)"
    )
    add_jobs_option(parser, "tags checked in parallel per upstream registry")


def run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config)
    check_local_sources(config)
    lock = read_lock(config.lock_path)
    with open_sources(config, console, jobs=args.jobs) as client:
        rows = outdated(config, lock, client, jobs=args.jobs)
        requests = client.request_count
    stale = [r for r in rows if r.state != "current"]
    shown = rows if args.all else stale
    if shown:
        width = max(len(f"{r.name}:{r.tag}") for r in shown)
        console.result(f"{'TAG':<{width}}  {'STATE':<8}  LOCKED        UPSTREAM")
        for row in sorted(shown, key=lambda r: (STATES.index(r.state), r.name, r.tag)):
            console.result(
                f"{row.name + ':' + row.tag:<{width}}  {row.state:<8}  "
                f"{(row.locked or '-')[7:19] or '-':<12}  {(row.upstream or '-')[7:19] or '-'}"
            )
    counts = {state: sum(1 for r in rows if r.state == state) for state in STATES}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    console.info(f"{len(rows)} tags: {summary or 'none'} ({requests} requests)")
    console.emit_json(
        {"outdated": bool(stale), "counts": counts, "rows": [r.to_json() for r in rows]}
    )
    return ExitCode.PENDING if stale else ExitCode.OK
