"""`registrish serve`: try the tree locally, or serve it for real on a small host."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import Console
from ..lock.config import DEFAULT_TAG_CACHE_SECONDS, load_config
from ..serving.routes import Policy
from ..serving.serve import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    make_server,
    serve_until_stopped,
)
from ..serving.stopsignals import StopSignals
from . import positive_int, require_local_root

NAME = "serve"
HELP = "serve the tree over HTTP with the registry semantics (read-only)"
DESCRIPTION = """\
Serve the static tree with exactly the headers the generated host configs send, plus
paginated tags/list and filtered referrers. Read-only: every method but GET/HEAD is 405.
Without --root the tree is the config's [registry].root. Stop with Ctrl-C or SIGTERM.
A connection is closed when it idles, or takes to send a request, longer than --timeout,
or when its client reads nothing of a response for that long (a slow download that
progresses is never cut); at most --max-connections are served at once, more wait.

  registrish serve                     then: docker pull 127.0.0.1:5555/NAME:TAG
  registrish serve --root public --port 8080
  registrish serve --host :: --port 5000        every IPv6 (and IPv4) interface
"""


def port_number(text: str) -> int:
    """An argparse type for --port: 0 to 65535 (0 picks a free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0 to 65535")
    return value


def bind_host(text: str) -> str:
    """An argparse type for --host: `[::1]`, as URLs write it, is `::1`."""
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def seconds(text: str) -> float:
    """An argparse type for --timeout: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_TIMEOUT:g} seconds (a day), not {text}"
        )
    return value


#: Larger values overflow the platform's time_t in socket timeouts; nobody needs more.
MAX_TIMEOUT = 86_400.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        type=bind_host,
        default="127.0.0.1",
        help="address to bind: 127.0.0.1 (default), ::1, 0.0.0.0, :: (IPv6 and IPv4)",
    )
    parser.add_argument(
        "--port", type=port_number, default=5555, help="port (default 5555; 0 picks one)"
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"close idle, half-sent or stalled connections (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections served at once; more wait (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument("--root", type=Path, help="the tree (default: [registry].root)")


def run(args: argparse.Namespace, console: Console) -> int:
    # Before anything is bound: a SIGTERM from here on stops serve cleanly, never lost.
    with StopSignals() as stop:
        return _serve(args, console, stop)


def _serve(args: argparse.Namespace, console: Console, stop: StopSignals) -> int:
    if args.root is not None:
        root: Path = args.root
        # The config is optional with --root; use its cache setting when there is one.
        cache = (
            load_config(args.config).tag_cache_seconds
            if args.config.exists()
            else DEFAULT_TAG_CACHE_SECONDS
        )
    else:
        config = load_config(args.config)
        require_local_root(
            config, "serve", "pull from the bucket's own URL, or serve a local tree with --root"
        )
        root, cache = config.root, config.tag_cache_seconds
    server = make_server(
        root=root.resolve(),
        host=args.host,
        port=args.port,
        policy=Policy(tag_cache_seconds=cache),
        access_log=console.info if console.verbosity >= 0 else None,
        timeout=args.timeout,
        max_connections=args.max_connections,
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    console.info(f"serving {root} on http://{shown}:{port}/ (Ctrl-C to stop)")
    console.info(f"try: docker pull {shown}:{port}/NAME:TAG")
    serve_until_stopped(server, stop)
    console.info("stopped")
    return 0
