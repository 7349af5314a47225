"""`registrish hosts`: regenerate the host configs without syncing."""

from __future__ import annotations

import argparse

from ..console import Console
from ..lock.config import load_config
from ..lock.lockfile import read_lock
from ..serving.hosts import write_host_configs
from ..tree import record

NAME = "hosts"
HELP = "regenerate the web server / host configs for [registry].hosts"
DESCRIPTION = """\
Write the configs for the hosts listed in [registry].hosts (nginx, caddy, apache,
netlify, cloudflare, s3, plain) into [registry].hosts_dir (and _headers/.htaccess into
the tree root). `registrish sync` does this too; unchanged files are not rewritten, and
nothing is rendered while the last sync's record vouches for them (same lock and config
bytes, no file of theirs touched since). A bucket root needs none: sync sets each object's
metadata.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options of its own


def run(args: argparse.Namespace, console: Console) -> int:
    config_bytes = record.config_bytes(args.config)
    config = load_config(args.config)
    if config.bucket is not None:
        # nothing to render: sync gives every object its Content-Type and Cache-Control
        console.result(
            f"no host config for the bucket {config.bucket}: `registrish sync` sets each "
            "object's Content-Type and Cache-Control"
        )
        console.emit_json({"written": []})
        return 0
    layout = config.layout
    lock_sha256 = record.lock_file_sha256(config.lock_path)  # the lock is never held whole
    key = record.key_of(config_bytes, lock_sha256, layout, config.hosts_dir)
    # The configs of a stale lock are what sync --frozen writes: staleness is not checked.
    if record.is_current(layout, key, "", frozen=True):
        written = []
    else:
        lock = read_lock(config.lock_path)
        written = write_host_configs(config, layout, lock, console)
    for path in written:
        console.result(f"wrote {path}")
    if not written:
        console.result("host configs are up to date")
    console.emit_json({"written": [str(p) for p in written]})
    return 0
