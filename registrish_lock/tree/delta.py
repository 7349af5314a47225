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

from ..lock.blocks import NotBlocks, header, parse_block, split


def _fingerprints(data: bytes) -> set[bytes] | None:
    """A 16-byte hash of each block (two locks of 100,000 tags held as sets of their
    blocks' text cost 100 MB), or None when the header is not plain tables."""
    try:
        header(data)
    except NotBlocks:
        return None
    return {_hash(b) for b in split(data)[1]}


def _hash(block: bytes) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


def _names(block: bytes) -> set[str] | None:
    try:
        tag = parse_block(block.decode())
    except (NotBlocks, UnicodeDecodeError):
        return None
    name = tag.get("name")
    return {name} if isinstance(name, str) else None


def changed_names(old: bytes, new: bytes) -> frozenset[str] | None:
    """Repository names with a tag added, removed or changed between two locks; None
    when the texts do not say it safely."""
    a, b = _fingerprints(old), _fingerprints(new)
    if a is None or b is None:
        return None
    differ = a ^ b
    names: set[str] = set()
    for data in (old, new):
        for block in split(data)[1]:
            if differ and _hash(block) in differ:
                found = _names(block)
                if found is None:
                    return None
                names |= found
    return frozenset(names)
