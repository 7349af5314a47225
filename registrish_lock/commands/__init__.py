"""One module per subcommand. Each exposes `NAME`, `HELP`, `add_arguments(parser)`
and `run(args, console) -> int`; the CLI only parses and dispatches."""

from __future__ import annotations

import argparse

from ..errors import RegistrishError
from ..lock.config import Config
from ..upstream.protocols import DEFAULT_JOBS


def require_local_root(config: Config, command: str, instead: str) -> None:
    """A usage error (exit 2) for a command that needs a local tree, on a bucket root."""
    if config.bucket is not None:
        raise RegistrishError(
            f"{config.path}: registry.root is the bucket {config.bucket}; `registrish "
            f"{command}` works on a local tree",
            hint=instead,
        )


def positive_int(text: str) -> int:
    """An argparse type for counts such as `--jobs`: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_jobs_option(
    parser: argparse.ArgumentParser, what: str, *, default: int = DEFAULT_JOBS
) -> None:
    """`-j/--jobs N`, declared once for every command that runs work in parallel (`lock`,
    `outdated` and `sync` share the default: requests in flight per upstream registry)."""
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"{what} (default {default})",
    )


def add_no_wait_option(parser: argparse.ArgumentParser) -> None:
    """`--no-wait`, for every command that takes the tree lock."""
    parser.add_argument(
        "--no-wait", action="store_true", help="fail (exit 5) if another process holds the tree"
    )


def add_frozen_option(parser: argparse.ArgumentParser) -> None:
    """`--frozen`, for every command that reads the lock without `lock`'s staleness check."""
    parser.add_argument(
        "--frozen", action="store_true", help="use the lock even if the config changed"
    )
