"""`registrish lock`: resolve registrish.toml to registrish.lock."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

from ..console import Console
from ..errors import ConfigError, ExitCode, StaleLockError
from ..lock import lockcache
from ..lock.config import Config, check_local_sources, load_config
from ..lock.lockfile import read_lock_bytes
from ..lock.resolve import CHANGE_KINDS, Change, resolve_into
from ..lock.stream import LockWriter, OldLock
from ..upstream.sources import open_sources
from . import add_jobs_option

NAME = "lock"
HELP = "resolve the config's tags to digests and write registrish.lock"
DESCRIPTION = """\
Resolve every tag selected by registrish.toml to its digest and write a
deterministic registrish.lock beside it.

Pins never move unless asked: images whose config did not change keep their
entries without contacting any registry. The file is rewritten only when its
content changes, so it is safe to run in CI and review in a pull request.

examples:
  registrish lock                     resolve new tags, keep existing pins
  registrish lock --upgrade           move every pin to what upstream serves now
  registrish lock --upgrade alpine    move only the pins of repository 'alpine'
  registrish lock --check             exit 1 if the lock is stale (no network)
  registrish lock --dry-run           show what would change, write nothing
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upgrade",
        nargs="*",
        metavar="NAME",
        help="re-resolve pinned tags (all, or only these repository names)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the lock is missing or stale for the config; no network",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change; exit 1 if anything would"
    )
    add_jobs_option(parser, "tags resolved in parallel per upstream registry")


def _describe(change: Change) -> str:
    # 12 hex digits are enough to tell pins apart in a terminal; --json has them whole.
    old = (change.old or "-")[:19]
    new = (change.new or "-")[:19]
    return f"  {change.kind:<10} {change.name}:{change.tag}  {old} -> {new}"


def _check(config: Config, old: OldLock | None, console: Console) -> int:
    """`--check`: is the lock there and made from this config? No network."""
    lock_path = config.lock_path
    if old is None:
        stale: StaleLockError | None = StaleLockError(
            f"{lock_path}: no such file", hint="run `registrish lock`"
        )
    elif old.config_hash != config.input_hash():
        stale = StaleLockError(
            f"{lock_path} is stale: {config.path} changed since it was written",
            hint="run `registrish lock` and commit the result",
        )
    else:
        stale = None
    console.emit_json({"stale": stale is not None, "lock": str(lock_path)})
    if stale is not None:
        raise stale
    console.result(f"{lock_path} is up to date")
    return ExitCode.OK


def run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config)
    lock_path = config.lock_path
    lock_bytes = read_lock_bytes(lock_path) if lock_path.exists() else None
    sha256 = hashlib.sha256(lock_bytes).hexdigest() if lock_bytes is not None else ""
    if lock_bytes is not None and args.upgrade is None and not (args.check or args.dry_run):
        tags = lockcache.current_tags(config, sha256)
        if tags is not None:  # the last run left exactly these bytes for these inputs
            check_local_sources(config)
            console.debug(
                "the lock is what the last `lock` left for this config: not re-reading it"
            )
            return _report(console, lock_path, tags=tags, unchanged=tags, requests=0)
    old = None
    if lock_bytes is not None:  # by repository: only those with work are parsed
        trusted = lockcache.wrote(config, sha256)
        old = OldLock.read(lock_path, lock_bytes, trusted=trusted)
        if trusted:
            console.debug("the lock is what the last `lock` wrote: copying the blocks it keeps")

    if args.check:
        return _check(config, old, console)
    check_local_sources(config)

    upgrade = None if args.upgrade is None else set(args.upgrade)
    unknown = sorted((upgrade or set()) - {i.name for i in config.images})
    if unknown:
        raise ConfigError(
            config.path,
            None,
            f"--upgrade names no image: {', '.join(unknown)}",
            hint="pass repository names as they appear in the registry (the images' 'name')",
        )

    # Each image's requests go to its source: a registry, an oci: layout or a docker-archive:.
    # The new lock is written as it is resolved (compared with the old bytes as it comes).
    inputs = config.image_inputs()
    with (
        open_sources(config, console, jobs=args.jobs) as client,
        LockWriter(
            lock_path, config.input_hash(), inputs, old=lock_bytes, dry_run=bool(args.dry_run)
        ) as writer,
    ):
        result = resolve_into(
            config, old, client, writer, upgrade=upgrade, jobs=args.jobs, console=console
        )
        differs = writer.finish()
        requests = client.request_count

    for change in result.changes:
        console.info(_describe(change))
    would = bool(result.changes) or (old is None) or differs
    written = differs and not args.dry_run
    if not args.dry_run:
        lockcache.remember(config, writer.sha256, result.tags)
    return _report(
        console,
        lock_path,
        tags=result.tags,
        unchanged=result.unchanged,
        requests=requests,
        changes=result.changes,
        written=written,
        dry_run=bool(args.dry_run),
        would=would,
    )


def _report(
    console: Console,
    lock_path: Path,
    *,
    tags: int,
    unchanged: int,
    requests: int,
    changes: Sequence[Change] = (),
    written: bool = False,
    dry_run: bool = False,
    would: bool = False,
) -> int:
    counts = {k: sum(1 for c in changes if c.kind == k) for k in CHANGE_KINDS}
    changed = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    summary = (
        f"{tags} tags locked: {changed + ', ' if changed else ''}"
        f"{unchanged} unchanged ({requests} requests, {console.elapsed():.1f} s)"
    )
    if dry_run:
        console.result(f"would write {lock_path}" if would else f"{lock_path} is up to date")
    else:
        console.result(f"wrote {lock_path}" if written else f"{lock_path} unchanged")
    console.info(summary)
    console.emit_json(
        {
            "lock": str(lock_path),
            "written": written,
            "dry_run": dry_run,
            "tags": tags,
            "requests": requests,
            "changes": [c.as_json() for c in changes],
            **counts,
            "unchanged": unchanged,
        }
    )
    if dry_run and would:
        return ExitCode.PENDING
    return ExitCode.OK
