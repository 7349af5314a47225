"""Which repositories a lock change touches, from the two locks' text: a sync after
`lock --upgrade NAME` re-reads those repositories of the tree, not all of them.

The lock is an array of `[[tag]]` tables, one block of text per tag (sub-tables of a tag
stay in its block). A block whose text is in both locks parses to the same tag in both,
so only the blocks that differ are parsed, each on its own, to learn their repository
names. Whatever cannot be told that way (a block that does not parse alone, tags outside
`[[tag]]` blocks) answers None: the caller reads the whole tree.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..lock.blocks import NotBlocks, header, parse_block, read

Opener = Callable[[], BinaryIO]


def _fingerprints(open_lock: Opener, sha256: str | None) -> set[bytes] | None:
    """A 16-byte hash of each block, the file read line by line (two locks of 100,000
    tags held whole, or as sets of their blocks' text, cost 50-100 MB); None when the
    header is not plain tables, or the bytes do not hash to `sha256`."""
    hasher = hashlib.sha256()
    try:
        with open_lock() as handle:
            head, bodies = read(handle, hasher)
            header(head)
            prints = {_hash(b) for b in bodies}
    except (OSError, NotBlocks):
        return None
    return prints if sha256 is None or hasher.hexdigest() == sha256 else None


def _hash(block: bytes) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


def _names(block: bytes) -> set[str] | None:
    try:
        tag = parse_block(block.decode())
    except (NotBlocks, UnicodeDecodeError):
        return None
    name = tag.get("name")
    return {name} if isinstance(name, str) else None


def _changed(
    old: tuple[Opener, str | None], new: tuple[Opener, str | None]
) -> frozenset[str] | None:
    a, b = _fingerprints(*old), _fingerprints(*new)
    if a is None or b is None:
        return None
    differ = a ^ b
    names: set[str] = set()
    for open_lock, sha256 in (old, new) if differ else ():
        hasher = hashlib.sha256()
        with open_lock() as handle:  # again: only the blocks that differ are parsed
            for block in read(handle, hasher)[1]:
                if _hash(block) in differ:
                    found = _names(block)
                    if found is None:
                        return None
                    names |= found
        if sha256 is not None and hasher.hexdigest() != sha256:
            return None  # replaced between the two reads
    return frozenset(names)


def changed_names(old: bytes, new: bytes) -> frozenset[str] | None:
    """Repository names with a tag added, removed or changed between two locks; None
    when the texts do not say it safely."""
    return _changed((lambda: io.BytesIO(old), None), (lambda: io.BytesIO(new), None))


def changed_names_of_files(
    old: Path, old_sha256: str, new: Path, new_sha256: str
) -> frozenset[str] | None:
    """`changed_names` of two lock files, read line by line (never whole); None also when
    one does not hash to its digest."""
    return _changed((lambda: old.open("rb"), old_sha256), (lambda: new.open("rb"), new_sha256))
