"""lock/stream.py and the streamed resolution: the lock `registrish lock` writes as it
resolves, from an old lock read by repository (copied where its pins stay), is byte for
byte `dumps` of the in-memory resolution, however the old lock was read."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from support.locks import big_lock
from support.memory_upstream import MemoryUpstream, image_manifest
from support.trees import sha

from registrish_lock.errors import ConfigError
from registrish_lock.lock import resolve as resolve_module
from registrish_lock.lock.config import Config, load_config
from registrish_lock.lock.lockfile import (
    Lock,
    LockedReferrer,
    LockedTag,
    dumps,
    loads,
    make_lock,
    render_header,
)
from registrish_lock.lock.resolve import Outcome, resolve, resolve_into
from registrish_lock.lock.stream import LockWriter, OldLock
from registrish_lock.oci.mediatypes import OCI_MANIFEST
from registrish_lock.upstream import manifestcache
from registrish_lock.upstream.manifestcache import ManifestCache

IMAGES = {
    "alpha": 'tags = ["1", "2", "3"]',
    "beta": 'tags = ["latest", "x"]\nplatforms = ["linux/arm64"]',
    "gamma": 'match = "^v[0-9]+$"',
}


def config_text(images: dict[str, str]) -> str:
    return "".join(
        f'[[image]]\nsource = "127.0.0.1:5000/{name}"\n{body}\n\n' for name, body in images.items()
    )


@pytest.fixture
def upstream() -> MemoryUpstream:
    up = MemoryUpstream()
    for tag in ("1", "2", "3"):
        up.put("alpha", tag, image_manifest(f"alpha-{tag}"))
    for tag in ("latest", "x"):
        up.put_index("beta", tag, {"linux/amd64": f"b-{tag}-amd", "linux/arm64": f"b-{tag}-arm"})
    for tag in ("v1", "v2", "edge"):
        up.put("gamma", tag, image_manifest(f"gamma-{tag}"))
    up.put("delta", "1", image_manifest("delta-1"))
    return up


def configure(tmp_path: Path, images: dict[str, str]) -> Config:
    path = tmp_path / "registrish.toml"
    path.write_text(config_text(images))
    return load_config(path)


def streamed(
    config: Config,
    upstream: MemoryUpstream,
    *,
    how: str = "scanned",
    upgrade: set[str] | None = None,
    dry_run: bool = False,
) -> tuple[bool, Outcome]:
    """`lock`'s way: the old file read by repository, the new one written as it comes."""
    path = config.lock_path
    data = path.read_bytes() if path.exists() else None
    old = None
    if data is not None:
        old = OldLock.read(path, data, trusted=how == "trusted")
    inputs = config.image_inputs()
    with LockWriter(path, config.input_hash(), inputs, old=data, dry_run=dry_run) as writer:
        outcome = resolve_into(config, old, upstream, writer, upgrade=upgrade)
        return writer.finish(), outcome


def in_memory(config: Config, upstream: MemoryUpstream, upgrade: set[str] | None = None) -> str:
    """The lock the in-memory resolution makes of the same start."""
    path = config.lock_path
    old = loads(path.read_text(), path) if path.exists() else None
    return dumps(resolve(config, old, upstream, upgrade=upgrade).lock)


@pytest.mark.parametrize("how", ["trusted", "scanned"])
def test_every_kind_of_run_writes_what_the_in_memory_lock_dumps(
    tmp_path: Path, upstream: MemoryUpstream, how: str
) -> None:
    config = configure(tmp_path, IMAGES)
    expected = in_memory(config, upstream)
    assert streamed(config, upstream, how=how)[0] is True  # from scratch
    assert config.lock_path.read_text() == expected

    # nothing to do: the same bytes, not even rewritten
    before = os.stat(config.lock_path)
    written, outcome = streamed(config, upstream, how=how)
    assert not written and outcome.unchanged == outcome.tags == 7 and outcome.changes == []
    assert os.stat(config.lock_path).st_ino == before.st_ino

    # a moved tag, upgraded by name; the others keep their pins (alpha:1 moved too)
    upstream.put("beta", "x", image_manifest("beta-x-moved"))
    upstream.put("alpha", "1", image_manifest("alpha-1-moved"))
    expected = in_memory(config, upstream, upgrade={"beta"})
    written, outcome = streamed(config, upstream, how=how, upgrade={"beta"})
    assert written and config.lock_path.read_text() == expected
    assert [(c.name, c.tag, c.kind) for c in outcome.changes] == [("beta", "x", "moved")]

    # the config changes: an image added between two, one dropped, one reselected, one
    # losing a tag
    images = {
        "alpha": 'tags = ["1", "3"]',
        "beta": 'tags = ["latest", "x"]\nplatforms = ["linux/amd64"]',
        "delta": 'tags = ["1"]',
    }
    config = configure(tmp_path, images)
    expected = in_memory(config, upstream)
    written, outcome = streamed(config, upstream, how=how)
    assert written and config.lock_path.read_text() == expected
    kinds = [(c.name, c.tag, c.kind) for c in outcome.changes]
    assert kinds == [  # beta:x is no index since it moved: its platforms do not apply
        ("alpha", "2", "removed"),
        ("beta", "latest", "reselected"),
        ("delta", "1", "added"),
        ("gamma", "v1", "removed"),
        ("gamma", "v2", "removed"),
    ]
    assert "alpha-1-moved" not in expected  # pins never move unless asked


@pytest.fixture
def locked(tmp_path: Path, upstream: MemoryUpstream) -> tuple[Config, bytes, Lock]:
    """The config of IMAGES, locked: its lock's bytes and meaning."""
    config = configure(tmp_path, IMAGES)
    streamed(config, upstream)
    data = config.lock_path.read_bytes()
    return config, data, loads(data.decode(), config.lock_path)


def test_a_lock_of_another_shape_is_read_whole_and_written_in_lock_s_form(
    locked: tuple[Config, bytes, Lock], upstream: MemoryUpstream
) -> None:
    config, data, lock = locked
    canonical = data.decode()
    # blocks in reverse order (valid TOML, read whole), then one block with a number
    # spelled otherwise (read by block, but not `lock`'s form)
    head, *blocks = canonical.split("\n[[tag]]\n")
    for text in (
        head + "".join("\n[[tag]]\n" + b.rstrip("\n") + "\n" for b in reversed(blocks)),
        canonical.replace("\nsize = ", "\nsize = +", 1),
    ):
        config.lock_path.write_text(text)
        assert loads(text, config.lock_path) == lock
        old = OldLock.read(config.lock_path, text.encode(), trusted=False)
        assert [n for n in old.names() if old.verbatim(n) is None]  # some re-rendered
        written, outcome = streamed(config, upstream)
        assert written and outcome.changes == []
        assert config.lock_path.read_text() == canonical


def test_the_old_lock_by_repository_is_the_same_however_it_is_read(
    locked: tuple[Config, bytes, Lock],
) -> None:
    config, data, lock = locked
    trusted = OldLock.read(config.lock_path, data, trusted=True)
    scanned = OldLock.read(config.lock_path, data, trusted=False)
    whole = OldLock.of_lock(lock)
    for old in (trusted, scanned, whole):
        assert old.names() == ["alpha", "beta", "gamma"]
        assert (old.config_hash, old.inputs) == (lock.config_hash, lock.inputs)
        for name, part in lock.by_repository():
            assert old.entries(name) == part.tags and old.count(name) == len(part.tags)
    for name, part in lock.by_repository():
        spans = {bytes(s) for s in (trusted.verbatim(name), scanned.verbatim(name)) if s}
        # the file's text of the repository's blocks: `dumps` of them, without the header
        assert spans == {dumps(part).encode()[len(render_header(lock.config_hash, lock.inputs)) :]}
        assert whole.verbatim(name) is None


def test_a_kept_repository_s_tags_still_refuse_a_path_collision(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    upstream.put("x", "v1", image_manifest("x-v1"))
    upstream.put("y", "a", image_manifest("y-a"))
    config = configure(tmp_path, {"x": 'match = "^v1$"'})
    streamed(config, upstream)
    # `x` keeps its pins (copied, not parsed); the new repository `x/manifests/v1` would
    # need the directory where x's tag v1 is a file
    text = config_text({"x": 'match = "^v1$"'})
    text += '[[image]]\nsource = "127.0.0.1:5000/y"\nname = "x/manifests/v1"\ntags = ["a"]\n'
    config.path.write_text(text)
    config = load_config(config.path)
    before = config.lock_path.read_bytes()
    with pytest.raises(ConfigError, match="needs the directory v2/x/manifests/v1/"):
        streamed(config, upstream, how="trusted")
    assert config.lock_path.read_bytes() == before
    assert upstream.calls["head"] == 1  # refused before any request of this run


def _rich_lock() -> Lock:
    """Indexes (one with a referrer) and single manifests: both ways a block is rendered."""
    tags, _ = big_lock(2, 2)
    signed = tags[0]
    signature = LockedReferrer(signed.digest, sha(b"sig"), OCI_MANIFEST, 40, "application/x-sig")
    plain = LockedTag("r0", "1.0", "oci:layouts/r0", sha(b"r0"), OCI_MANIFEST, 400, 4000)
    tags = [replace(signed, referrers=(signature,)), *tags[1:], plain]
    return make_lock(sha(b"config"), tags, {t.name: "sha256:00" for t in tags})


def write(path: Path, lock: Lock, old: bytes | None, *, dry_run: bool = False) -> bool:
    with LockWriter(path, lock.config_hash, dict(lock.inputs), old=old, dry_run=dry_run) as w:
        w.entries(lock.tags)
        return w.finish()


def test_the_writer_writes_dumps_and_only_when_the_bytes_change(tmp_path: Path) -> None:
    path = tmp_path / "registrish.lock"
    lock = _rich_lock()
    for one in (lock, Lock(lock.config_hash, (), lock.inputs)):  # the empty lock too
        assert write(path, one, None) and path.read_text() == dumps(one)
    data = dumps(lock).encode()
    path.write_bytes(data)
    stamp = os.stat(path)
    assert not write(path, lock, data)
    assert os.stat(path).st_ino == stamp.st_ino
    shorter = Lock(lock.config_hash, lock.tags[:-1], lock.inputs)  # a prefix of the old bytes
    assert write(path, shorter, data, dry_run=True) and path.read_bytes() == data
    assert write(path, shorter, data) and path.read_text() == dumps(shorter)
    assert write(path, lock, dumps(shorter).encode()) and path.read_bytes() == data


def test_a_failed_run_leaves_the_old_lock_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "registrish.lock"
    lock = _rich_lock()
    path.write_text("old\n")
    with (
        pytest.raises(RuntimeError),
        LockWriter(path, lock.config_hash, dict(lock.inputs), old=b"old\n") as writer,
    ):
        writer.entries(lock.tags[:2])
        raise RuntimeError("upstream failed")
    assert path.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [path]
    with (
        pytest.raises(AssertionError, match="out of order"),
        LockWriter(path, lock.config_hash, dict(lock.inputs), old=None) as writer,
    ):
        writer.entries(reversed(lock.tags))
    assert path.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [path]


def test_a_digest_shared_by_distant_tags_is_fetched_once_and_then_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifestcache, "RECENT", 2)
    up = MemoryUpstream()
    tags = [f"t{n:03d}" for n in range(300)]
    shared = up.put("a", tags[0], image_manifest("shared"))
    for tag in tags[1:-1]:
        up.put("a", tag, image_manifest(f"own-{tag}"))
    up.put("a", tags[-1], up.manifests[shared])  # the first and the last tag: one digest
    caches: list[ManifestCache] = []

    class Watched(ManifestCache):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            caches.append(self)

    monkeypatch.setattr(resolve_module, "ManifestCache", Watched)
    monkeypatch.setattr(resolve_module, "CHUNK", 16)  # many chunks, the shared digest far apart
    path = tmp_path / "registrish.toml"
    path.write_text(
        '[[image]]\nsource = "127.0.0.1:5000/a"\ntags = ['
        + ", ".join(f'"{t}"' for t in tags)
        + "]\n"
    )
    lock = resolve(load_config(path), None, up, jobs=4).lock
    assert len(lock.tags) == 300 and up.calls["get"] == 299
    (cache,) = caches
    assert cache.fetched == 299 and cache.held <= 2  # nothing expected is left held


def test_the_cache_holds_an_expected_digest_until_its_last_tag_is_done(tmp_path: Path) -> None:
    from registrish_lock.oci.reference import Reference

    up = MemoryUpstream()
    digest = up.put("a", "t", image_manifest("one"))
    other = up.put("a", "u", image_manifest("two"))
    repo = Reference("127.0.0.1:5000", "a")
    cache = ManifestCache(up, None, recent=0)
    cache.expect(repo, digest)
    cache.expect(repo, digest)
    cache.get(repo, digest, "a")
    cache.get(repo, other, "a")  # not expected, nothing recent kept: let go at once
    cache.release(repo, digest)
    assert cache.get(repo, digest, "a").digest == digest and up.calls["get"] == 2
    assert cache.held == 1
    cache.release(repo, digest)
    assert cache.held == 0
    cache.get(repo, digest, "a")
    assert up.calls["get"] == 3  # fetched again: nobody expected it any more
