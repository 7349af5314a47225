"""`registrish hosts`: regenerate the host configs without syncing."""

from __future__ import annotations

import argparse

from ..console import Console
from ..lock.config import load_config
from ..lock.lockfile import read_lock
from ..serving.hosts import write_host_configs

NAME = "hosts"
HELP = "regenerate the web server / host configs for [registry].hosts"
DESCRIPTION = """\
Write the configs for the hosts listed in [registry].hosts (nginx, caddy, apache,
netlify, cloudflare, s3, plain) into [registry].hosts_dir (and _headers/.htaccess into
the tree root). `registrish sync` does this too; unchanged files are not rewritten.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own


def run(args: argparse.Namespace, console: Console) -> int:
    config = load_config(args.config)
    lock = read_lock(config.lock_path)
    written = write_host_configs(config, config.layout, lock, console)
    for path in written:
        console.result(f"wrote {path}")
    if not written:
        console.result("host configs are up to date")
    console.emit_json({"written": [str(p) for p in written]})
    return 0
