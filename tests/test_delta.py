"""tree/delta.py: which repositories two locks' texts differ in (or None: read them all)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from registrish_lock import fsutil
from registrish_lock.lock.blocks import read
from registrish_lock.tree.delta import changed_names, changed_names_of_files, pieces

HEAD = 'version = 1\nconfig-hash = "sha256:aa"\n\n[inputs]\n"a" = "sha256:01"\n'


def block(name: str, tag: str, digest: str = "0" * 64) -> str:
    return f'\n[[tag]]\nname = "{name}"\ntag = "{tag}"\ndigest = "sha256:{digest}"\n'


def lock(*blocks: str, head: str = HEAD) -> bytes:
    return (head + "".join(blocks)).encode()


def test_the_same_lock_changes_nothing() -> None:
    text = lock(block("a", "1"), block("b", "1"))
    assert changed_names(text, text) == frozenset()


def test_a_moved_added_or_removed_tag_names_its_repository() -> None:
    old = lock(block("a", "1"), block("b", "1"), block("c", "1"))
    new = lock(block("a", "1"), block("b", "1", "1" * 64), block("d", "1"))
    assert changed_names(old, new) == frozenset({"b", "c", "d"})


def test_a_header_change_alone_changes_no_repository() -> None:
    old = lock(block("a", "1"))
    new = lock(block("a", "1"), head=HEAD.replace("01", "02"))
    assert changed_names(old, new) == frozenset()


def test_what_it_cannot_read_safely_is_none() -> None:
    old = lock(block("a", "1"))
    assert changed_names(old, lock(block("a", "1"), "\n[[tag]]\nname = ")) is None
    inline = b'version = 1\ntag = [{name = "a", tag = "1"}]\n'
    assert changed_names(old, inline) is None
    assert changed_names(old, b"\xff") is None
    # two tags in one block (a hand-written header the split does not see) are not guessed
    odd = lock(block("a", "1") + '[[ tag ]]\nname = "b"\ntag = "2"\n')
    assert changed_names(old, odd) is None


def test_blocks_only_in_the_old_lock_are_found_again_wherever_they_are() -> None:
    """The old lock's leftover blocks are read again by offset: first, middle and last."""
    # without the blank line between blocks, a block's text is the same wherever it is
    tags = [block(n, "1", str(i) * 64)[1:] for i, n in enumerate("abcde")]
    old = lock(*tags)
    assert changed_names(old, lock(*tags[1:4])) == frozenset({"a", "e"})
    assert changed_names(old, lock(*tags[:2], *tags[3:])) == frozenset({"c"})
    moved = lock(*tags[:4], block("e", "1", "f" * 64)[1:])
    assert changed_names(old, moved) == frozenset({"e"})
    assert changed_names(lock(), lock(*tags[:1])) == frozenset({"a"})
    assert changed_names(lock(*tags[:1]), lock()) == frozenset({"a"})
    assert changed_names(old, lock()) == frozenset("abcde")


def test_changed_names_of_files_checks_both_digests(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(lock(block("a", "1"), block("b", "1")))
    new.write_bytes(lock(block("a", "1"), block("b", "2")))
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (old, new)}
    assert changed_names_of_files(old, digest[old], new, digest[new]) == frozenset({"b"})
    assert changed_names_of_files(old, digest[new], new, digest[new]) is None
    assert changed_names_of_files(old, digest[old], new, digest[old]) is None
    assert changed_names_of_files(tmp_path / "gone", digest[old], new, digest[new]) is None


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 8, 9, 10, 1 << 20])
def test_pieces_are_what_blocks_read_yields_at_their_offsets(
    block_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `bytes.find` split agrees with the line reader, wherever a read ends."""
    monkeypatch.setattr(fsutil, "_COPY_BLOCK", block_size)
    texts = [
        lock(block("a", "1"), block("b", "2")),
        b"[[tag]]\nname = 'a'\n[[tag]]\n[[tag]]\n\n[[tag]]\nx = 1\n",  # no header, empty blocks
        b"version = 1\n[[tag]]",  # no newline after the last line: not a block's start
        b"version = 1\r\n[[tag]]\r\nname = 'a'\r\n",  # not `[[tag]]` and a newline
        b"a\n[[tag]]x\n[[tag]]\n[[tag]]\n",
        b"",
        b"\n",
    ]
    for text in texts:
        head, bodies = read(io.BytesIO(text))
        found = list(pieces(io.BytesIO(text), hashlib.sha256()))
        assert [p for _, p in found] == [head, *bodies], text
        assert all(text[at : at + len(p)] == p for at, p in found), text
        hasher = hashlib.sha256()
        list(pieces(io.BytesIO(text), hasher))
        assert hasher.digest() == hashlib.sha256(text).digest()
