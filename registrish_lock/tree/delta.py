"""Which repositories a lock change touches, from the two locks' text: a sync after
`lock --upgrade NAME` re-reads those repositories of the tree, not all of them.

The lock is an array of `[[tag]]` tables, one block of text per tag (sub-tables of a tag
stay in its block). A block whose text is in both locks parses to the same tag in both,
so only the blocks that differ are parsed, each on its own, to learn their repository
names. Whatever cannot be told that way (a block that does not parse alone, tags outside
`[[tag]]` blocks) answers None: the caller reads the whole tree.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BLOCK = "\n[[tag]]\n"


def _split(text: str) -> tuple[str, set[str]] | None:
    head, *blocks = text.split(_BLOCK)
    try:
        if "tag" in tomllib.loads(head):
            return None  # tags written another way: not for this shortcut
    except tomllib.TOMLDecodeError:
        return None
    return head, set(blocks)


def _names(block: str) -> set[str] | None:
    try:
        doc = tomllib.loads("[[tag]]\n" + block)
    except tomllib.TOMLDecodeError:
        return None
    tags = doc.get("tag")
    if not isinstance(tags, list) or len(tags) != 1 or not isinstance(tags[0], dict):
        return None
    name = tags[0].get("name")
    return {name} if isinstance(name, str) else None


def changed_names(old: bytes, new: bytes) -> frozenset[str] | None:
    """Repository names with a tag added, removed or changed between two locks; None
    when the texts do not say it safely."""
    try:
        a, b = _split(old.decode()), _split(new.decode())
    except UnicodeDecodeError:
        return None
    if a is None or b is None:
        return None
    names: set[str] = set()
    for block in a[1] ^ b[1]:
        found = _names(block)
        if found is None:
            return None
        names |= found
    return frozenset(names)
