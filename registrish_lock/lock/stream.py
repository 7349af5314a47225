"""`registrish lock` at 100,000 tags: the old lock read by repository, the new one written
as it is resolved, neither held whole as records.

The old lock (`OldLock`) keeps its file's bytes and where each repository's blocks are
(tags are sorted, so one repository's blocks are one span). A repository whose pins stay
is copied span for span, neither parsed nor rendered, when the span is exactly what
`lock` writes for its entries: either the note (`lockcache.wrote`) says the whole file is
the one the last `lock` of this release wrote and read back, or every block was read,
checked and found equal to its own rendering. Other repositories are parsed when asked
(`entries`). A lock not in the block form, or out of order, is read whole as before.

The new lock (`LockWriter`) is compared with the old bytes as it comes: nothing is
written while it is the same, and a temporary file (the identical prefix, then the rest)
replaces the lock at the end only when it differs. Every rendered block is read back and
checked as it is written, so no lock this module would refuse to read is ever written.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from ..fsutil import atomic_writer
from . import blocks
from .lockfile import (
    Checker,
    Lock,
    LockedTag,
    check_header,
    check_paths,
    check_tag,
    header_table,
    parse_lock_bytes,
    render_block,
    render_header,
)

_SEP = blocks.BLOCK.encode()
#: What precedes a block's text in the file, and the line it starts with.
_LEAD, _OPEN = blocks.BLOCK[:1], blocks.BLOCK[1:]


class _NotStreamed(Exception):
    """The lock is valid TOML of another shape (out of order, say): read it whole."""


@dataclass
class _Span:
    """One repository's blocks in the old file."""

    start: int
    end: int
    count: int
    #: Every block is exactly what `lock` writes for its entry (copied as is).
    verbatim: bool


class OldLock:
    """The lock a `lock` run starts from, by repository name."""

    def __init__(
        self,
        path: Path,
        config_hash: str,
        inputs: dict[str, str],
        *,
        data: bytes = b"",
        spans: dict[str, _Span] | None = None,
        parsed: dict[str, tuple[LockedTag, ...]] | None = None,
    ) -> None:
        self.path = path
        self.config_hash = config_hash
        self.inputs = inputs
        self._data = data
        self._spans = spans or {}
        self._parsed = parsed or {}

    @classmethod
    def of_lock(cls, lock: Lock, path: Path = Path("registrish.lock")) -> OldLock:
        parsed: dict[str, tuple[LockedTag, ...]] = {}
        for name, one in lock.by_repository():
            parsed[name] = one.tags
        return cls(path, lock.config_hash, dict(lock.inputs), parsed=parsed)

    @classmethod
    def read(cls, path: Path, data: bytes, *, trusted: bool) -> OldLock:
        """The lock in `data` (the file's bytes). `trusted`: the note says these bytes are
        what the last `lock` wrote, so their spans are found, not read."""
        c = Checker(path)
        if trusted:
            with contextlib.suppress(blocks.NotBlocks, _NotStreamed):
                return cls._found(c, data)
        with contextlib.suppress(blocks.NotBlocks, _NotStreamed):
            return cls._scanned(c, data)
        # Another shape, or an error: read whole, for its meaning or for the error the
        # whole read reports (the same as every other command's).
        return cls.of_lock(parse_lock_bytes(data, path), path)

    @classmethod
    def _found(cls, c: Checker, data: bytes) -> OldLock:
        """Spans by a search for each repository's first block (names from `inputs`)."""
        head_end, _ = blocks.spans(data)
        config_hash, inputs = check_header(c, blocks.header(data[:head_end]))
        starts: list[tuple[str, int]] = []
        at = head_end
        for name in inputs:  # sorted, as the blocks are
            found = data.find(f'{blocks.BLOCK}name = "{name}"\n'.encode(), at)
            if found >= 0:
                starts.append((name, found))
                at = found + 1
        if not starts or starts[0][1] != head_end:
            raise _NotStreamed
        ends = [start for _, start in starts[1:]] + [len(data)]
        spans = {
            name: _Span(start, end, data.count(_SEP, start, end), verbatim=True)
            for (name, start), end in zip(starts, ends, strict=True)
        }
        return cls(c.path, config_hash, inputs, data=data, spans=spans)

    @classmethod
    def _scanned(cls, c: Checker, data: bytes) -> OldLock:
        """Every block read and checked as the whole read would (in order only)."""
        head_end, each = blocks.spans(data)
        config_hash, inputs = check_header(c, blocks.header(data[:head_end]))
        spans: dict[str, _Span] = {}
        tags_by_name: dict[str, list[str]] = {}
        sources: set[str] = set()
        previous: tuple[str, str] | None = None
        for i, (start, end) in enumerate(each):
            entry = check_tag(c, blocks.table(data[start + len(_SEP) : end]), i, sources)
            if previous is not None and entry.key <= previous:
                raise _NotStreamed  # the whole read sorts it, or names the duplicate
            previous = entry.key
            same = data[start:end] == (_LEAD + render_block(entry)).encode()
            span = spans.get(entry.name)
            if span is None:
                spans[entry.name] = _Span(start, end, 1, same)
            else:
                span.end, span.count, span.verbatim = end, span.count + 1, span.verbatim and same
            tags_by_name.setdefault(entry.name, []).append(entry.tag)
        check_paths(c, tags_by_name)
        return cls(c.path, config_hash, inputs, data=data, spans=spans)

    def names(self) -> list[str]:
        return sorted(self._spans.keys() | self._parsed.keys())

    def count(self, name: str) -> int:
        span = self._spans.get(name)
        return span.count if span is not None else len(self._parsed.get(name, ()))

    def verbatim(self, name: str) -> memoryview | None:
        """The repository's blocks as the file has them, when they are in `lock`'s form."""
        span = self._spans.get(name)
        if span is None or not span.verbatim:
            return None
        return memoryview(self._data)[span.start : span.end]

    def entries(self, name: str) -> tuple[LockedTag, ...]:
        """The repository's entries, parsed now (checked again: a few blocks)."""
        span = self._spans.get(name)
        if span is None:
            return self._parsed.get(name, ())
        c = Checker(self.path)
        sources: set[str] = set()
        return tuple(
            check_tag(c, table, i, sources)
            for i, table in enumerate(blocks.tag_tables(self._data[span.start : span.end]))
        )


class LockWriter:
    """The new lock, given in order: blocks of entries (rendered, read back, checked) and
    spans of the old file (copied). Compared with `old` as it comes; written only where it
    differs (never with `dry_run`)."""

    def __init__(
        self,
        path: Path,
        config_hash: str,
        inputs: dict[str, str],
        *,
        old: bytes | None,
        dry_run: bool = False,
    ) -> None:
        self.path = path
        self._config_hash, self._inputs = config_hash, inputs
        self._old = memoryview(old) if old is not None else None
        self._dry_run = dry_run
        self._check = Checker(path)
        self._sources: set[str] = set()
        self._head: str | None = render_header(config_hash, inputs)
        if blocks.header(self._head) != header_table(config_hash, inputs):
            raise AssertionError(f"{path}: the lock's header does not survive a round trip")
        self._previous: tuple[str, str] | None = None
        self._stack = contextlib.ExitStack()
        self._file: BinaryIO | None = None
        self._hasher = hashlib.sha256()
        self._offset = 0  # bytes given so far
        self._same = old is not None  # … and all equal to the old file's
        self._diverged = False
        #: Tags given so far.
        self.tags = 0

    def __enter__(self) -> LockWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.__exit__(kind, exc, tb)  # a temporary file not committed is removed

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def entries(self, tags: Iterable[LockedTag]) -> None:
        for entry in tags:
            self._after(entry.key)
            text = render_block(entry)
            table = blocks.parse_block(text[len(_OPEN) :])
            again = check_tag(self._check, table, self.tags, self._sources)
            if again != entry:  # never write a lock this module would refuse or misread
                raise AssertionError(
                    f"{self.path}: {entry.name}:{entry.tag} does not survive a round trip"
                )
            self._emit((_LEAD + text).encode())
            self.tags += 1

    def verbatim(self, name: str, span: memoryview, count: int) -> None:
        """`count` blocks of repository `name`, as the old file has them."""
        self._after((name, ""))
        self._emit(span)
        self.tags += count
        self._previous = (name, "\U0010ffff")  # past every tag of `name`

    def _after(self, key: tuple[str, str]) -> None:
        if self._previous is not None and key <= self._previous:
            raise AssertionError(f"{self.path}: {key[0]}:{key[1]} is out of order")
        self._previous = key
        if self._head is not None:
            head, self._head = self._head, None
            self._emit(head.encode())

    def _emit(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        end = self._offset + len(data)
        if self._same:
            assert self._old is not None
            if self._old[self._offset : end] == data:
                self._offset = end
                return
        if not self._diverged:
            self._diverge()
        self._offset = end
        if self._file is not None:
            self._file.write(data)

    def _diverge(self) -> None:
        """The new lock differs from here: write it (the identical prefix first)."""
        self._same, self._diverged = False, True
        if not self._dry_run:
            self._file = self._stack.enter_context(atomic_writer(self.path))
            if self._old is not None:
                self._file.write(self._old[: self._offset])

    def finish(self) -> bool:
        """Commit the new lock; True when it differs from the old one (and was written
        unless `dry_run`)."""
        if self._head is not None:  # no tag at all
            self._head = None
            self._emit(render_header(self._config_hash, self._inputs, empty=True).encode())
        if self._same and self._old is not None and self._offset != len(self._old):
            self._diverge()  # a prefix of the old file
        self._stack.close()  # the temporary file replaces the lock
        return not self._same
