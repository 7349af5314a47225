"""The lock read one `[[tag]]` block at a time: a lock of 100,000 tags is 26 MB of TOML,
and `tomllib` holds the whole parsed document (a dict per tag, a string per value) before
the first tag is checked; block by block, one tag's tables live at a time.

`registrish lock` writes the header tables, then one `[[tag]]` block per tag (its
`[[tag.platforms]]` … sub-tables inside it). Cut at every line that is exactly `[[tag]]`,
the header and each block parse on their own to what the whole document holds, as long as
every piece parses alone, the header holds no `tag` and each block exactly one `tag` table
and nothing else: a cut inside a multi-line string leaves that string unterminated in its
piece (which then does not parse), and a block holding another top-level table does not
have the one key. Whatever is not that shape raises `NotBlocks`: the caller parses the
whole text (`tomllib`'s own errors and meaning, whatever the layout).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The line that opens each tag's block (with the newlines around it).
BLOCK = "\n[[tag]]\n"
_HEADER = BLOCK[1:]


class NotBlocks(Exception):
    """The text is not header + `[[tag]]` blocks that parse alone (parse it whole)."""


def header(text: str) -> dict[str, Any]:
    """The tables before the first `[[tag]]` block."""
    cut = text.find(BLOCK)
    try:
        doc = tomllib.loads(text if cut < 0 else text[:cut])
    except tomllib.TOMLDecodeError:
        raise NotBlocks from None
    if "tag" in doc:
        raise NotBlocks  # tags written another way
    return doc


def tag_tables(text: str) -> Iterator[dict[str, Any]]:
    """Each `[[tag]]` block's table, in order, parsed when reached (`NotBlocks` then)."""
    cut = text.find(BLOCK)
    while cut >= 0:
        start = cut + len(BLOCK)
        cut = text.find(BLOCK, start - 1)  # an empty block shares its newline
        yield parse_block(text[start:] if cut < 0 else text[start:cut])


def parse_block(body: str) -> dict[str, Any]:
    """The one tag table a block's text (after its `[[tag]]` line) holds."""
    try:
        doc = tomllib.loads(_HEADER + body)
    except tomllib.TOMLDecodeError:
        raise NotBlocks from None
    tables = doc.get("tag")
    if len(doc) != 1 or not isinstance(tables, list) or len(tables) != 1:
        raise NotBlocks
    table: dict[str, Any] = tables[0]
    return table
