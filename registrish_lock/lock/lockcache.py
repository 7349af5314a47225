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
"""

from __future__ import annotations

import contextlib
import hashlib
import json

from .. import __version__
from ..fsutil import atomic_write_bytes
from .config import Config

_FILE = "locked.json"


def _key(config: Config, lock_bytes: bytes) -> dict[str, object]:
    return {
        "registrish": __version__,
        "config_input_hash": config.input_hash(),
        "lock_sha256": hashlib.sha256(lock_bytes).hexdigest(),
        "lock_path": str(config.lock_path.resolve()),
    }


def current_tags(config: Config, lock_bytes: bytes) -> int | None:
    """The lock's tag count when the note vouches that `lock` has nothing to do."""
    try:
        doc = json.loads((config.layout.state / _FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or any(
        doc.get(k) != v for k, v in _key(config, lock_bytes).items()
    ):
        return None
    tags = doc.get("tags")
    return tags if isinstance(tags, int) else None


def remember(config: Config, lock_bytes: bytes, tags: int) -> None:
    """Note a successful run; only where the tree's store directory already exists."""
    state = config.layout.state
    if not state.is_dir():
        return
    doc = {**_key(config, lock_bytes), "tags": tags}
    data = json.dumps(doc, sort_keys=True).encode() + b"\n"
    with contextlib.suppress(OSError):  # a cache: failing to write it costs only time
        atomic_write_bytes(state / _FILE, data, tmp_dir=state)
