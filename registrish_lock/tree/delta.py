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

from ..lock.blocks import BLOCK, NotBlocks, header, parse_block, read

Opener = Callable[[], BinaryIO]
BLOCK_LINE = BLOCK[1:].encode()  # `[[tag]]` and its newline


def _offsets(handle: BinaryIO, sha256: str | None) -> dict[bytes, int] | None:
    """A 16-byte hash of each block -> where its text starts, the file read line by line
    (two locks of 100,000 tags held whole, or as sets of their blocks' text, cost
    50-100 MB); None when the header is not plain tables, or the bytes do not hash to
    `sha256`."""
    hasher = hashlib.sha256()
    head, bodies = read(handle, hasher)
    header(head)
    at, offset = {}, len(head)
    for body in bodies:
        offset += len(BLOCK_LINE)
        at[_hash(body)] = offset
        offset += len(body)
    return at if sha256 is None or hasher.hexdigest() == sha256 else None


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
    """One pass over each lock: the old one's blocks hashed (and where each starts), the
    new one's looked up as they come (a block not in the old lock is parsed there and
    then); the old blocks left over are read again by offset, checked against their hash."""
    open_old, old_sha256 = old
    open_new, new_sha256 = new
    names: set[str] = set()
    try:
        with open_old() as before:
            at = _offsets(before, old_sha256)
            if at is None:
                return None
            hasher = hashlib.sha256()
            with open_new() as after:
                head, bodies = read(after, hasher)
                header(head)
                for body in bodies:
                    key = _hash(body)
                    if key in at:
                        del at[key]  # in both locks: the same tag
                        continue
                    found = _names(body)  # added or changed
                    if found is None:
                        return None
                    names |= found
            if new_sha256 is not None and hasher.hexdigest() != new_sha256:
                return None
            for key, offset in at.items():  # removed or changed
                before.seek(offset)
                body = read(before)[0]  # its text, up to the next `[[tag]]` line
                found = _names(body) if _hash(body) == key else None
                if found is None:
                    return None  # not the bytes hashed above: rewritten meanwhile
                names |= found
    except (OSError, NotBlocks):
        return None
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
