"""The `registrish` command line: parse, dispatch to a command module, and turn a
`RegistrishError` into one line and a documented exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from . import __version__
from .console import Console
from .errors import ExitCode, RegistrishError

COMMANDS = ("lock", "sync", "gc", "hosts", "serve", "check", "publish", "outdated", "ls")

EPILOG = """\
exit codes:
  0  success
  1  changes pending (--dry-run, lock --check), a stale lock, or a failed check
  2  bad input: config, lock or command line (the message names file, key and fix)
  3  an upstream registry failed (unreachable, auth refused, tag not found)
  4  content did not match its digest or size
  5  the tree is locked by another registrish process (--no-wait)
  6  a local problem: disk, permissions, a port in use
  130 interrupted

typical flow:
  registrish lock            resolve registrish.toml to registrish.lock
  registrish sync            make the static tree under [registry].root match the lock
  registrish ls              list what the tree serves (from the lock and the tree alone)
  registrish serve           try it: docker pull 127.0.0.1:5555/NAME:TAG
  registrish check URL       prove a deployment serves every locked image
"""


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"registrish_lock.commands.{name}")


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes. Subcommands get a copy whose defaults are
    suppressed, so `registrish -c X lock` and `registrish lock -c X` both work."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default(Path("registrish.toml")),
        help="the config file (default: ./registrish.toml; the lock lives beside it)",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print only errors and results",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more detail (every request; never a secret)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON document on stdout",
    )
    common.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks on errors"
    )
    return common


def build_parser(modules: dict[str, ModuleType]) -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="registrish",
        description="Build a static Docker/OCI registry from a declared set of images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"registrish {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in modules.items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        module.add_arguments(p)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, found without importing any command:
    only its module is then loaded, which keeps every run's start-up short."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-c", "--config"):
            skip = True  # its value may be any word, even a command's name
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_command(args_in)
    modules = {}
    for name in (chosen,) if chosen else COMMANDS:
        try:
            modules[name] = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"registrish_lock.commands.{name}":
                raise
    parser = build_parser(modules)
    args = parser.parse_args(args_in)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    console = Console(
        verbosity=-1 if args.quiet else args.verbose,
        json_mode=args.json,
        debug_mode=args.debug,
    )
    try:
        return int(modules[args.command].run(args, console))
    except RegistrishError as exc:
        _traceback(console)
        console.error(exc.message, exc.hint)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except OSError as exc:
        _traceback(console)
        console.error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return int(ExitCode.LOCAL)


def _traceback(console: Console) -> None:
    """With --debug, the traceback of the error being handled (stderr). The error line and
    the documented exit code follow as without it: --debug must not change what scripts see."""
    if console.debug_mode:
        traceback.print_exc(file=console.err)
        console.err.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
