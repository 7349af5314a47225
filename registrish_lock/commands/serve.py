"""`registrish serve`: try the tree locally, or serve it for real on a small host."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_TAG_CACHE_SECONDS, load_config
from ..console import Console
from ..routes import Policy
from ..serve import make_server, serve_until_stopped

NAME = "serve"
HELP = "serve the tree over HTTP with the registry semantics (read-only)"
DESCRIPTION = """\
Serve the static tree with exactly the headers the generated host configs send, plus
paginated tags/list and filtered referrers. Read-only: every method but GET/HEAD is 405.
Without --root the tree is the config's [registry].root. Stop with Ctrl-C or SIGTERM.

  registrish serve                     then: docker pull 127.0.0.1:5555/NAME:TAG
  registrish serve --root public --port 8080
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5555, help="port (default 5555; 0 picks one)")
    parser.add_argument("--root", type=Path, help="the tree (default: [registry].root)")


def run(args: argparse.Namespace, console: Console) -> int:
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
        root, cache = config.root, config.tag_cache_seconds
    server = make_server(
        root=root.resolve(),
        host=args.host,
        port=args.port,
        policy=Policy(tag_cache_seconds=cache),
        access_log=console.info if console.verbosity >= 0 else None,
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    console.info(f"serving {root} on http://{shown}:{port}/ (Ctrl-C to stop)")
    console.info(f"try: docker pull {shown}:{port}/NAME:TAG")
    serve_until_stopped(server)
    console.info("stopped")
    return 0
