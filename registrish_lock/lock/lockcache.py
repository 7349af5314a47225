"""A note that `registrish lock` has nothing to do: its last run left these exact lock bytes
for a config with these exact inputs.

`lock` without `--upgrade` keeps every pin of an image whose inputs did not change, and a
run that succeeded leaves every image of the config pinned with its current inputs: so for
the same config inputs and the same lock bytes, a rerun would read the lock, make no
request and write the same bytes. Parsing a large TOML lock twice (read, then the write's
round trip) was that rerun's whole cost. The note sits beside the tree (in the store
directory), keyed by the sha256 of the lock's bytes, the config's input hash and the
registrish version: a hand edit of the lock or any change of what resolution reads takes
the full path. It is only a cache: lost or unreadable, `lock` simply does the work.

The same note vouches for the lock's blocks when the config changed or `--upgrade NAME`
asks for work: a lock with the bytes the last `lock` of this release wrote (and read back)
is in the exact form `lock` writes, so the blocks of the repositories that keep their
pins are copied as they are, neither parsed nor rendered again (`lock/stream.py`).
"""

from __future__ import annotations

import contextlib
import json

from .. import __version__
from ..fsutil import atomic_write_bytes
from .config import Config

_FILE = "locked.json"


def _key(config: Config, lock_sha256: str) -> dict[str, object]:
    """What the note is keyed by, `config_input_hash` last (`wrote` ignores it)."""
    return {
        "registrish": __version__,
        "lock_sha256": lock_sha256,
        "lock_path": str(config.lock_path.resolve()),
        "config_input_hash": config.input_hash(),
    }


def _note(config: Config, lock_sha256: str, *, same_config: bool) -> dict[str, object] | None:
    """The note, when it was left for a lock with these bytes (and this config)."""
    try:
        doc = json.loads((config.layout.state / _FILE).read_bytes())
    except (OSError, ValueError):
        return None
    key = list(_key(config, lock_sha256).items())
    if not isinstance(doc, dict) or any(
        doc.get(k) != v for k, v in (key if same_config else key[:-1])
    ):
        return None
    return doc


def current_tags(config: Config, lock_sha256: str) -> int | None:
    """The lock's tag count when the note vouches that `lock` has nothing to do."""
    doc = _note(config, lock_sha256, same_config=True)
    tags = None if doc is None else doc.get("tags")
    return tags if isinstance(tags, int) else None


def wrote(config: Config, lock_sha256: str) -> bool:
    """Whether the lock with these bytes is the one the last `lock` of this release wrote
    (for whatever config): its blocks are then in `lock`'s exact form, checked."""
    return _note(config, lock_sha256, same_config=False) is not None


def remember(config: Config, lock_sha256: str, tags: int) -> None:
    """Note a successful run; only where the tree's store directory already exists."""
    state = config.layout.state
    if not state.is_dir():
        return
    doc = {**_key(config, lock_sha256), "tags": tags}
    data = json.dumps(doc, sort_keys=True).encode() + b"\n"
    with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
        atomic_write_bytes(state / _FILE, data, tmp_dir=state)
