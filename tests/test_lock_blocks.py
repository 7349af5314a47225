"""lock/blocks.py: the lock read one `[[tag]]` block at a time means what the whole
document means; a text of another shape is read whole (same lock, same errors)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import tomli_w

from registrish_lock.errors import LockfileError
from registrish_lock.lock import blocks
from registrish_lock.lock.lockfile import (
    HEADER,
    Lock,
    LockedManifest,
    LockedReferrer,
    LockedTag,
    dumps,
    loads,
    make_lock,
    parse_lock_bytes,
    read_lock,
)
from registrish_lock.oci import mediatypes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PATH = Path("registrish.lock")


def _sha(n: int) -> str:
    return f"sha256:{n:064x}"


def _lock() -> str:
    index = LockedTag(
        "team/app",
        "1.0",
        "docker.io/team/app",
        _sha(1),
        mediatypes.OCI_INDEX,
        300,
        9000,
        platforms=(
            LockedManifest("linux/amd64", _sha(2), mediatypes.OCI_MANIFEST, 500),
            LockedManifest("", _sha(3), mediatypes.OCI_MANIFEST, 501),
        ),
        referrers=(
            LockedReferrer(_sha(1), _sha(4), mediatypes.OCI_MANIFEST, 40, "application/x-sig"),
        ),
    )
    plain = [
        LockedTag(f"r{n}", f"1.{t}", f"oci:layouts/r{n}", _sha(10 + t), mediatypes.OCI_MANIFEST,
                  400 + t, 4000)
        for n in range(2)
        for t in range(3)
    ]  # fmt: skip
    return dumps(make_lock("sha256:" + "a" * 64, [index, *plain], {"r0": "sha256:01"}))


def test_blocks_hold_what_the_whole_document_holds() -> None:
    text = _lock()
    whole = tomllib.loads(text)
    head = blocks.header(text)
    assert head == {k: v for k, v in whole.items() if k != "tag"}
    assert list(blocks.tag_tables(text)) == whole["tag"]
    lock = loads(text, PATH)
    assert len(lock.tags) == 7 and dumps(lock) == text  # the round trip is exact
    assert lock.by_key()[("team/app", "1.0")].platforms[0].platform == ""


def test_a_cut_inside_a_multiline_string_reads_the_whole_text() -> None:
    text = _lock()
    # a key registrish ignores, holding a line `[[tag]]` in a multi-line string
    odd = text.replace('tag = "1.1"\n', 'tag = "1.1"\nnote = """\n[[tag]]\nname = "x"\n"""\n', 1)
    with pytest.raises(blocks.NotBlocks):
        list(blocks.tag_tables(odd))
    assert loads(odd, PATH) == loads(text, PATH)


def test_a_table_after_the_tags_reads_the_whole_text() -> None:
    text = _lock()
    head, _sep, rest = text.partition("\n[inputs]\n")
    inputs, _, tags = rest.partition("\n\n")
    moved = head + "\n" + tags + "\n[inputs]\n" + inputs + "\n"
    assert tomllib.loads(moved) == tomllib.loads(text)
    with pytest.raises(blocks.NotBlocks):
        list(blocks.tag_tables(moved))
    assert loads(moved, PATH) == loads(text, PATH)


def test_errors_name_the_tag_either_way() -> None:
    text = _lock()
    bad = text.replace(f'digest = "{_sha(12)}"', 'digest = "sha256:nope"')
    with pytest.raises(LockfileError, match=r"tag\[2\]\.digest: invalid digest"):
        loads(bad, PATH)
    broken = bad + '\n[[tag]]\nname = "unterminated\n'
    with pytest.raises(LockfileError, match="invalid TOML"):
        loads(broken, PATH)
    inline = 'version = 1\nconfig-hash = "x"\ntag = [{name = "a"}]\n'
    with pytest.raises(LockfileError, match=r"tag\[0\]\.tag: missing"):
        loads(inline, PATH)


BODIES = [
    'name = "a"\nsize = 0\nplatforms = []\n',
    'name = "a\\"b"\ntag = "x"\n',  # an escape: tomllib reads it
    'name = "a" # a comment\n',
    'name = "é/ü"\nsize = 123456789012345678\n',
    "size = 1234567890123456789\n",  # past the simple form's digits
    "size = 007\n",  # not TOML
    'name = "a"\nname = "b"\n',  # a duplicate key: not TOML
    'platforms = []\n[[tag.platforms]]\ndigest = "d"\n',  # not TOML
    '[[tag.platforms]]\ndigest = "d"\n[[tag.platforms]]\ndigest = "e"\nsize = 3\n',
    'name = "a"\n[[tag.referrers]]\nsubject = "s"\n[[tag.platforms]]\nplatform = ""\n',
    'name = "a"\r\nsize = 1\r\n',
    'name = "tab\there"\n',
    "name = 'literal'\n",
    'name = "a"\n\n\n',
]


@pytest.mark.parametrize("body", BODIES)
def test_a_block_reads_as_tomllib_reads_it(body: str) -> None:
    try:
        expected: object = tomllib.loads("[[tag]]\n" + body)["tag"][0]
    except tomllib.TOMLDecodeError:
        expected = blocks.NotBlocks
    try:
        got: object = blocks.parse_block(body)
    except blocks.NotBlocks:
        got = blocks.NotBlocks
    assert got == expected


def _tomli_w_whole(lock: Lock) -> str:
    """What `dumps` wrote before it wrote tag by tag: tomli_w's text of the whole document."""
    doc = tomllib.loads(dumps(lock))  # the document, as the lock's reader sees it
    return HEADER + "\n" + tomli_w.dumps(doc)


@pytest.mark.parametrize(
    "inputs, extra",
    [
        ({"r0": "sha256:01"}, ()),
        ({}, ()),
        ({"r0": "sha256:01"}, ("oci:layouts/é", "oci:a b/c\\d")),
    ],
)
def test_dumps_writes_what_tomli_w_writes_for_the_whole_document(
    inputs: dict[str, str], extra: tuple[str, ...]
) -> None:
    lock = loads(_lock(), PATH)
    tags = [*lock.tags]
    for i, source in enumerate(extra):
        tags.append(LockedTag("odd", f"v{i}", source, _sha(90 + i), mediatypes.OCI_MANIFEST, 1, 2))
    lock = make_lock(lock.config_hash, tags, inputs)
    assert dumps(lock) == _tomli_w_whole(lock)
    assert loads(dumps(lock), PATH) == lock
    empty = make_lock(lock.config_hash, [], inputs)
    assert dumps(empty) == _tomli_w_whole(empty)


def test_order_and_duplicates_whatever_the_order_of_the_blocks() -> None:
    text = _lock()
    head, *bodies = text.split("\n[[tag]]\n")
    shuffled = head + "".join("\n[[tag]]\n" + b for b in reversed(bodies))
    assert loads(shuffled, PATH) == loads(text, PATH)  # sorted as the lock keeps them
    assert parse_lock_bytes(shuffled.encode(), PATH) == loads(text, PATH)
    for dup in (
        head + "".join("\n[[tag]]\n" + b for b in [bodies[0], *bodies]),  # adjacent
        head + "".join("\n[[tag]]\n" + b for b in [*bodies, bodies[0]]),  # far apart
    ):
        with pytest.raises(LockfileError, match=r"duplicate entry for r0:1\.0"):
            loads(dup, PATH)


def test_bytes_are_read_block_by_block_and_bad_utf8_is_named() -> None:
    text = _lock()
    assert parse_lock_bytes(text.encode(), PATH) == loads(text, PATH)
    bad = text.encode().replace(b'tag = "1.1"', b'tag = "1.\xff"', 1)
    with pytest.raises(LockfileError, match="cannot read"):
        parse_lock_bytes(bad, PATH)


def test_a_lock_file_is_read_line_by_line_and_checked_against_its_hash(tmp_path: Path) -> None:
    text = _lock()
    path = tmp_path / "registrish.lock"
    path.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert read_lock(path, sha256=digest) == loads(text, PATH)
    with pytest.raises(LockfileError, match="changed while it was read"):
        read_lock(path, sha256="0" * 64)
    path.write_text(text.replace("\n[[tag]]\n", "\n[[tag]]\r\n", 1))  # read whole instead
    assert read_lock(path) == loads(text, PATH)
    path.write_text(text.replace('digest = "sha256:0', 'digest = "sha256:x', 1))
    with pytest.raises(LockfileError, match=r"tag\[0\]\.digest: invalid digest"):
        read_lock(path)
