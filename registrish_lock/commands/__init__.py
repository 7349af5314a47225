"""One module per subcommand. Each exposes `NAME`, `HELP`, `add_arguments(parser)`
and `run(args, console) -> int`; the CLI only parses and dispatches."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type for counts such as `--jobs`: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
