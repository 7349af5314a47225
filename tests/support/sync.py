"""`sync` in-process against the fake upstream (`support.fake_upstream`), and a project
(config + lock) for the CLI whose `sync` reads from that fake."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registrish_lock.console import Console
from registrish_lock.lock.lockfile import Lock, write_lock
from registrish_lock.progress import QuietProgress
from registrish_lock.tree.apply import LazyUpstream, SyncResult, sync_tree
from registrish_lock.tree.layout import Layout
from registrish_lock.upstream.protocols import BlobSource as Upstream
from support.cli import quiet
from support.fake_upstream import FakeUpstream, build_image, lock_of, locked


class Factory:
    """Counts how often sync asked for a client (a no-op sync must not even create one)."""

    def __init__(self, up: FakeUpstream) -> None:
        self.up = up
        self.created = 0

    def __call__(self) -> Upstream:
        self.created += 1
        return self.up


def sync(
    root: Path, lock: Lock, up: FakeUpstream, *, console: Console | None = None, **kw: Any
) -> SyncResult:
    factory = Factory(up)
    return sync_tree(
        lock=lock,
        layout=Layout(root),
        upstream=LazyUpstream(factory),
        console=console or quiet(),
        progress=QuietProgress(),
        jobs=4,
        **kw,
    )


def write_project(tmp_path: Path, lock: Lock | None = None) -> tuple[Path, Callable[[], str]]:
    config = tmp_path / "registrish.toml"
    config.write_text(
        '[registry]\nroot = "public"\n\n[[image]]\n'
        f'source = "{lock.tags[0].source if lock else "127.0.0.1:5999/app"}"\n'
        f'name = "{lock.tags[0].name if lock else "app"}"\ntags = ["v1"]\n'
    )
    from registrish_lock.lock.config import load_config

    input_hash = load_config(config).input_hash()
    if lock is not None:
        write_lock(config.with_suffix(".lock"), Lock(input_hash, lock.tags))
    return config, lambda: input_hash


def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, Path]:
    """A config and lock of one image `app:v1`, with `sync` reading it from a fake upstream."""
    up = FakeUpstream()
    lock = lock_of(locked("app", "v1", build_image(up, "app", "v1")))
    config, _ = write_project(tmp_path, lock)
    from registrish_lock.commands import sync as sync_cmd

    monkeypatch.setattr(sync_cmd, "open_sources", lambda *_args, **_kw: up)
    return up, config
