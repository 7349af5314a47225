"""The lock's `[[tag]]` blocks read 256 KiB at a time, by one regular expression.

`read_lock` of 100,000 tags read line by line (`blocks.read`, `blocks.parse_block`) and
checked each tag's table (`lockfile.check_tag`): 1.5 s. A block in exactly the form
`registrish lock` writes for a single manifest (`render_block`) is matched whole here,
its fields taken from the groups: the tag and digest rules are part of the expression,
and a repository name, source or media type is checked (by `check_tag`) the first time
it is met, then only looked up. Any other block (an index, referrers, a hand edit: other
order, spacing, comments, escapes) is matched as its text and goes the old way, in place;
so the tags, their order and the first error are those of the old reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol, TypeVar

from ..oci.reference import DIGEST_RE, TAG_RE
from . import blocks

#: Bytes read at a time: a chunk, its text and its matches stay about 1 MB (1 MiB chunks
#: read 100,000 tags slower here, and peaked 7 MiB higher).
CHUNK = 1 << 18

_STRING = r'"([^"\\\x00-\x1f\x7f]*)"'  # as `blocks._LINE`: no escape, no control character
_NUMBER = r"(0|[1-9][0-9]{0,17})"
#: One block: the form `lock` writes for a single manifest (groups 1-7), or else any
#: block's text up to the next `[[tag]]` line or the end (group 8). Blocks are matched
#: one after the other from a chunk's start: the second form matches wherever the first
#: does not, so `findall` returns every block.
_BLOCK = re.compile(
    r"\[\[tag\]\]\n(?:"
    rf'name = {_STRING}\ntag = "({TAG_RE.pattern})"\nsource = {_STRING}\n'
    rf'digest = "({DIGEST_RE.pattern})"\nmedia-type = {_STRING}\n'
    rf"size = {_NUMBER}\ntotal-size = {_NUMBER}\nplatforms = \[\]\n\n?"
    r"(?=\[\[tag\]\]\n|\Z)"
    r"|((?:[^\n]*\n)*?(?:[^\n]+\Z)?)(?=\[\[tag\]\]\n|\Z))"
)


class Entry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def media_type(self) -> str: ...


_E = TypeVar("_E", bound=Entry)


def read(handle: BinaryIO, hasher: blocks.Hasher) -> tuple[bytes, Iterator[str]]:
    """The header's bytes (read line by line), then the rest as texts of whole blocks,
    each starting at a `[[tag]]` line; every byte read goes into `hasher`
    (`blocks.NotBlocks` for bytes that are not UTF-8)."""
    head, first = blocks.read_head(handle, hasher)

    def chunks() -> Iterator[str]:
        data = first
        while data:
            more = handle.read(CHUNK)
            hasher.update(more)
            data += more
            # cut before the last `[[tag]]` line: a chunk holds whole blocks (and whole
            # UTF-8 characters); at the end, all that is left
            cut = data.rfind(b"\n[[tag]]\n") + 1 if more else len(data)
            if cut > 0:
                try:
                    yield data[:cut].decode("utf-8")
                except UnicodeDecodeError:
                    raise blocks.NotBlocks from None
                data = data[cut:]

    return head, chunks()


def entries(
    chunks: Iterator[str],
    make: Callable[[str, str, str, str, str, int, int], _E],
    check: Callable[[dict[str, Any], int], _E],
) -> Iterator[_E]:
    """Each block's entry, in order: `make(name, tag, source, digest, media type, size,
    total size)` for a block in `lock`'s form whose name, source and media type were
    checked before; `check(table, index)` for the others (the table `parse_block` reads)."""
    names: dict[str, str] = {}  # each checked, mapped to the string the entries share
    sources: dict[str, str] = {}
    types: dict[str, str] = {}
    known_name, known_source, known_type = names.get, sources.get, types.get
    i = 0
    for chunk in chunks:
        for name, tag, source, digest, media_type, size, total, body in _BLOCK.findall(chunk):
            if not size:  # the second form
                yield check(blocks.parse_block(body), i)
            elif (
                (n := known_name(name)) is not None
                and (s := known_source(source)) is not None
                and (m := known_type(media_type)) is not None
            ):
                yield make(n, tag, s, digest, m, int(size), int(total))
            else:
                entry = check(
                    {
                        "name": name,
                        "tag": tag,
                        "source": source,
                        "digest": digest,
                        "media-type": media_type,
                        "size": int(size),
                        "total-size": int(total),
                        "platforms": [],
                    },
                    i,
                )
                names[name] = entry.name
                sources[source] = entry.source
                types[media_type] = entry.media_type
                yield entry
            i += 1
