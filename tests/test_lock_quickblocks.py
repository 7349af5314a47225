"""lock/quickblocks.py: `read_lock` matching whole blocks by one regular expression reads
the lock the old way reads it (`parse_lock_bytes`: block by block, then whole): the same
`Lock`, the same strings shared, the same one-line error, whatever the chunk size."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from registrish_lock.errors import LockfileError
from registrish_lock.lock import blocks, lockfile, quickblocks
from registrish_lock.lock.lockfile import (
    Lock,
    LockedManifest,
    LockedReferrer,
    LockedTag,
    dumps,
    make_lock,
    parse_lock_bytes,
    read_lock,
)
from registrish_lock.oci import mediatypes

#: A block and its neighbours inside one chunk, a block across chunks, a chunk smaller
#: than one block, and the default.
CHUNKS = [7, 300, 4096, quickblocks.CHUNK]


def _sha(n: int) -> str:
    return f"sha256:{n:064x}"


def _tags() -> list[LockedTag]:
    """Every kind of tag the lock writes, and the odd names and values the rules allow."""
    single = [
        LockedTag(name, tag, source, _sha(n), media_type, size, total)
        for n, (name, tag, source, media_type, size, total) in enumerate(
            [
                ("a", "1.0", "docker.io/library/a", mediatypes.OCI_MANIFEST, 0, 0),
                ("a", "_", "docker.io/library/a", mediatypes.DOCKER_MANIFEST, 1, 2),
                ("a", "Z" * 128, "localhost:5000/a", mediatypes.OCI_INDEX, 10**17, 10**18 - 1),
                ("a", "x.-_9", "[::1]:5000/a", mediatypes.DOCKER_LIST, 5, 6),
                ("a__b.c-d/e/f", "v1", "oci:layouts/a", mediatypes.OCI_MANIFEST, 7, 8),
                ("a__b.c-d/e/f", "v2", "docker-archive:a.tar", mediatypes.OCI_MANIFEST, 7, 8),
                ("big", "huge", "oci:b", mediatypes.OCI_MANIFEST, 10**18, 2**63 - 1),
                ("uni", "1", "oci:layouts/é ü", mediatypes.OCI_MANIFEST, 1, 1),
                ("uni", "2", 'oci:a "b"\\c', mediatypes.OCI_MANIFEST, 1, 1),
            ],
            start=100,
        )
    ]
    index = LockedTag(
        "idx", "1", "docker.io/idx", _sha(1), mediatypes.OCI_INDEX, 300, 9000,
        platforms=(
            LockedManifest("", _sha(3), mediatypes.OCI_MANIFEST, 501),
            LockedManifest("linux/arm/v7", _sha(2), mediatypes.OCI_MANIFEST, 500),
        ),
        referrers=(
            LockedReferrer(_sha(1), _sha(4), mediatypes.OCI_MANIFEST, 40, "application/x-sig"),
            LockedReferrer(_sha(4), _sha(5), mediatypes.OCI_MANIFEST, 41, "",
                           "sha256-" + "0" * 63 + "4.sig"),
        ),
    )  # fmt: skip
    many = [
        LockedTag(f"r{n}", f"1.{t}", f"docker.io/r{n}", _sha(1000 + 10 * n + t),
                  mediatypes.OCI_MANIFEST, 400 + t, 4000)
        for n in range(3)
        for t in range(12)
    ]  # fmt: skip
    return [*single, index, *many]


def _text() -> str:
    return dumps(make_lock("sha256:" + "a" * 64, _tags(), {"a": "sha256:01"}))


def _outcome(read: Callable[[], Lock]) -> Lock | str:
    try:
        return read()
    except LockfileError as exc:
        return f"{exc} | {exc.hint}"


def _same(path: Path, data: bytes, chunk: int, monkeypatch: pytest.MonkeyPatch) -> Lock | str:
    """What `read_lock` reads in `data`, asserted equal to the old reading's."""
    path.write_bytes(data)
    monkeypatch.setattr(quickblocks, "CHUNK", chunk)
    new, old = _outcome(lambda: read_lock(path)), _outcome(lambda: parse_lock_bytes(data, path))
    assert new == old
    return new


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often `read_lock` parsed a block the old way, and read the file whole."""
    calls = {"parse_block": 0, "whole": 0}
    parse_block, whole = blocks.parse_block, lockfile.parse_lock_bytes

    def counted_parse(body: str) -> dict[str, object]:
        calls["parse_block"] += 1
        return parse_block(body)

    def counted_whole(data: bytes, path: Path) -> Lock:
        calls["whole"] += 1
        return whole(data, path)

    monkeypatch.setattr(blocks, "parse_block", counted_parse)
    monkeypatch.setattr(lockfile, "parse_lock_bytes", counted_whole)
    return calls


@pytest.mark.parametrize("chunk", CHUNKS)
def test_every_kind_of_tag_reads_as_before_and_lock_s_form_is_matched(
    tmp_path: Path, chunk: int, spied: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text()
    lock = _same(tmp_path / "registrish.lock", text.encode(), chunk, monkeypatch)
    assert isinstance(lock, Lock) and list(lock.tags) == sorted(_tags(), key=lambda t: t.key)
    spied.update(parse_block=0, whole=0)
    assert read_lock(tmp_path / "registrish.lock") == lock
    # matched whole but for the index, the escaped source and a size past 18 digits
    assert spied == {"parse_block": 3, "whole": 0}
    for t in lock.tags:  # one string per repository, source and media type
        assert t.name is sys.intern(t.name) and t.source is sys.intern(t.source)
        assert t.media_type is sys.intern(t.media_type)


HAND_EDITS = [
    ('name = "r1"\ntag = "1.3"\n', 'tag = "1.3"\nname = "r1"\n'),  # keys reordered
    ('tag = "1.3"\n', 'tag = "1.3" # pinned\n'),  # a comment
    ('tag = "1.3"\n', 'tag  =  "1.3"\n'),  # spacing
    ('tag = "1.3"\n', "tag = '1.3'\n"),  # a literal string
    ('tag = "1.3"\n', 'tag = "1.\\u0033"\n'),  # an escape
    ("size = 403\n", "size = 4_03\n"),
    ("size = 403\n", "size = 0x193\n"),
    ('tag = "1.3"\n', 'tag = "1.3"\nnote = "x"\n'),  # a key registrish ignores
    ("platforms = []\n\n[[tag]]\n", "platforms = []\n\n\n[[tag]]\n"),  # blank lines
    ("platforms = []\n\n[[tag]]\n", "platforms = []\n[[tag]]\n"),  # none
    ("platforms = []\n\n[[tag]]\n", "platforms = [ ]\n\n[[tag]]\n"),
    ("\n[[tag]]\n", "\n[[tag]]\r\n"),  # read whole
    ("\n[[tag]]\n", "\n[[tag]] # a comment\n"),  # read whole
    ('tag = "1.3"\n', 'tag = "1.3"\nnote = """\n[[tag]]\n"""\n'),  # read whole
]


@pytest.mark.parametrize("chunk", CHUNKS[:3])
@pytest.mark.parametrize("edit", HAND_EDITS, ids=range(len(HAND_EDITS)))
def test_a_hand_edited_lock_reads_as_before(
    tmp_path: Path, edit: tuple[str, str], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text()
    old, new = edit
    assert old in text
    edited = text.replace(old, new, 1)
    assert isinstance(
        _same(tmp_path / "registrish.lock", edited.encode(), chunk, monkeypatch), Lock
    )


@pytest.mark.parametrize("ending", ["", "\n", "\n\n", "\n# the end\n"])
def test_the_end_of_the_file_reads_as_before(
    tmp_path: Path, ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text().removesuffix("\n") + ending
    for chunk in CHUNKS:
        assert isinstance(
            _same(tmp_path / "registrish.lock", text.encode(), chunk, monkeypatch), Lock
        )


DAMAGE = [
    ('digest = "sha256:00000000000000000000000000000000000000000000000000000000000003f3"',
     'digest = "sha256:nope"', r"tag\[\d+\]\.digest: invalid digest"),
    ('tag = "1.3"', 'tag = "-1.3"', r"\.tag: invalid tag"),
    ('tag = "1.3"', 'tag = "' + "a" * 129 + '"', r"\.tag: invalid tag"),
    ('name = "r1"', 'name = "R1"', r"\.name: invalid repository name"),
    ('source = "docker.io/r1"', 'source = "docker.io/r1:"', r"\.source: invalid source"),
    ('media-type = "application/vnd.oci.image.manifest.v1+json"\nsize = 403',
     'media-type = "text/plain"\nsize = 403', r"\.media-type: unsupported media type"),
    ("size = 403", "size = -403", r"\.size: must not be negative"),
    ("size = 403", 'size = "403"', r"\.size: missing or not int"),
    ("size = 403", "size = 4.03", r"\.size: missing or not int"),
    ('name = "r1"', 'name = "unterminated', "invalid TOML"),
    ('tag = "1.3"', 'tag = "1.2"', r"duplicate entry for r\d:1\.2"),
    ('name = "r2"\ntag = "1.0"', 'name = "r0"\ntag = "1.0"', r"duplicate entry for r0:1\.0"),
    ('tag = "1.3"', 'tag = "1.3/x"', r"\.tag: invalid tag"),
]  # fmt: skip


@pytest.mark.parametrize("chunk", CHUNKS[1:3])
@pytest.mark.parametrize("damage", DAMAGE, ids=range(len(DAMAGE)))
def test_a_damaged_block_gives_the_same_one_line_error(
    tmp_path: Path, damage: tuple[str, str, str], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text()
    old, new, error = damage
    assert old in text
    got = _same(
        tmp_path / "registrish.lock", text.replace(old, new, 1).encode(), chunk, monkeypatch
    )
    assert isinstance(got, str) and "\n" not in got
    assert got.startswith(f"{tmp_path / 'registrish.lock'}: ")
    with pytest.raises(LockfileError, match=error):
        read_lock(tmp_path / "registrish.lock")


def test_a_path_collision_and_bad_utf8_give_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tags = [LockedTag("x", "v1", "oci:a", _sha(1), mediatypes.OCI_MANIFEST, 1, 1),
            LockedTag("x/manifests/v1", "a", "oci:a", _sha(2), mediatypes.OCI_MANIFEST, 1, 1)]  # fmt: skip
    text = dumps(make_lock("sha256:" + "a" * 64, [*_tags(), *tags]))
    got = _same(tmp_path / "registrish.lock", text.encode(), 300, monkeypatch)
    assert isinstance(got, str) and "needs the directory v2/x/manifests/v1/" in got
    bad = _text().encode().replace(b'tag = "1.3"', b'tag = "1.\xff"', 1)
    got = _same(tmp_path / "registrish.lock", bad, 300, monkeypatch)
    assert isinstance(got, str) and "cannot read" in got


def test_the_bytes_read_are_hashed_whatever_the_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _text()
    path = tmp_path / "registrish.lock"
    path.write_text(text)
    for chunk in CHUNKS:
        monkeypatch.setattr(quickblocks, "CHUNK", chunk)
        assert read_lock(path, sha256=hashlib.sha256(text.encode()).hexdigest()).tags
        with pytest.raises(LockfileError, match="changed while it was read"):
            read_lock(path, sha256="0" * 64)


def test_any_one_character_changed_reads_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed sample of damage anywhere: deleted, doubled or replaced characters."""
    data = _text().encode()
    rng = random.Random(13)
    outcomes = set()
    for _ in range(300):
        at = rng.randrange(len(data))
        new = rng.choice([b"", data[at : at + 1] * 2, bytes([rng.choice(b'"=[]\\ #\n0aZ-_.:/')])])
        got = _same(
            tmp_path / "registrish.lock", data[:at] + new + data[at + 1 :], 300, monkeypatch
        )
        outcomes.add(isinstance(got, Lock))
    assert outcomes == {True, False}  # some still read, some do not: both compared
