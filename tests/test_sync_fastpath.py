"""The cold-sync fast paths of issue 6 keep sync's guarantees: a blob the registry client
verified while writing it is committed without a second hash only while it is provably
that same file; directory fsyncs are batched per phase, and every directory a phase
renamed into is fsynced before a tag that reaches it is written."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from support.fake_upstream import FakeUpstream, build_image, build_index, lock_of, locked
from support.sync import sync
from support.trees import verify_tree
from testbed.images import SeededUpstream
from testbed.tls import issue, make_ca, serve_https

from registrish_lock import fsutil
from registrish_lock.console import Console
from registrish_lock.errors import IntegrityError, RegistrishError
from registrish_lock.fsutil import FileStamp, VerifiedFile
from registrish_lock.lock.config import RegistrySettings
from registrish_lock.oci.reference import Reference
from registrish_lock.tree import state as tree
from registrish_lock.tree.layout import Layout
from registrish_lock.upstream.credentials import CredentialStore
from registrish_lock.upstream.protocols import BlobRequest
from registrish_lock.upstream.ratelimit import RetryPolicy
from registrish_lock.upstream.registry import RegistryClient


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _written(path: Path, data: bytes) -> VerifiedFile:
    """What a verifying writer reports for `data` it just wrote to `path`."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        stamp = FileStamp.of(os.fstat(handle.fileno()))
    return VerifiedFile(_digest(data), len(data), stamp)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file commit_blob re-hashes."""
    calls: list[Path] = []
    real = tree.hash_file

    def spy(path: Path) -> tuple[str, int]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(tree, "hash_file", spy)
    return calls


def test_commit_trusts_an_unchanged_verified_file(tmp_path: Path, hashes: list[Path]) -> None:
    layout = Layout(tmp_path / "root")
    tree.ensure_dirs(layout)
    data = os.urandom(100_000)
    src = tree.partial_path(layout, _digest(data))
    verified = _written(src, data)
    tree.commit_blob(layout, src, _digest(data), len(data), verified=verified)
    assert hashes == []
    assert layout.store_blob(_digest(data)).read_bytes() == data


@pytest.mark.parametrize("change", ["rewritten", "replaced", "other digest", "none"])
def test_commit_rehashes_unless_the_file_is_the_verified_one(
    tmp_path: Path, hashes: list[Path], change: str
) -> None:
    layout = Layout(tmp_path / "root")
    tree.ensure_dirs(layout)
    data = os.urandom(50_000)
    digest = _digest(data)
    src = tree.partial_path(layout, digest)
    verified: VerifiedFile | None = _written(src, data)
    assert verified is not None
    evil = bytes(len(data))  # same size, other bytes
    if change == "rewritten":  # in place, then mtime set back: ctime still moves
        with src.open("r+b") as handle:
            handle.write(evil)
        os.utime(src, ns=(verified.stamp.mtime_ns, verified.stamp.mtime_ns))
    elif change == "replaced":  # another file renamed over it
        other = src.with_name("other")
        other.write_bytes(evil)
        os.replace(other, src)
    elif change == "other digest":
        verified = VerifiedFile(_digest(evil), len(data), verified.stamp)
        src.write_bytes(evil)
    else:
        verified = None
        src.write_bytes(evil)
    with pytest.raises(IntegrityError):
        tree.commit_blob(layout, src, digest, len(data), verified=verified)
    assert hashes == [src]
    assert not src.exists() and not layout.store_blob(digest).exists()


@pytest.mark.slow
def test_real_fetch_blob_reports_the_file_it_verified(
    seeded_upstream: SeededUpstream, tmp_path: Path, hashes: list[Path]
) -> None:
    host = seeded_upstream.host
    repo = Reference(host, "app-oci")
    layout = Layout(tmp_path / "root")
    tree.ensure_dirs(layout)
    client = RegistryClient(
        settings=lambda _r: RegistrySettings(insecure=True),
        credentials=CredentialStore(environ={}),
        console=Console(verbosity=-1, err=io.StringIO()),
    )
    with client:
        doc = json.loads(client.get_manifest(repo, "v1").data)
        layer = doc["layers"][0]
        dest = tree.partial_path(layout, layer["digest"])
        # Resumed after a kept prefix: the prefix is hashed by the client too.
        client.fetch_blob(BlobRequest(repo, layer["digest"], layer["size"], dest))
        full = dest.read_bytes()
        dest.write_bytes(full[: len(full) // 2])
        verified = client.fetch_blob(BlobRequest(repo, layer["digest"], layer["size"], dest))
    assert verified is not None  # a file destination is always stamped
    assert (verified.digest, verified.size) == (layer["digest"], layer["size"])
    assert verified.stamp == FileStamp.of(os.stat(dest))
    tree.commit_blob(layout, dest, layer["digest"], layer["size"], verified=verified)
    assert hashes == []
    assert _digest(layout.store_blob(layer["digest"]).read_bytes()) == layer["digest"]


def test_directory_fsyncs_are_batched_and_precede_the_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record renames into the tree and directory fsyncs: each directory is fsynced once
    per phase, and after the last rename into it that a tag depends on."""
    events: list[tuple[str, Path]] = []
    real_fsync_dir, real_replace = fsutil.fsync_dir, os.replace

    def fsync_dir(directory: Path) -> None:
        events.append(("fsync", Path(directory)))
        real_fsync_dir(directory)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("rename", Path(dst)))

    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "replace", replace)

    up = FakeUpstream()
    a = build_image(up, "a", "v1", seed="base", layer_sizes=(5000, 9000))
    b = build_image(up, "b", "v1", seed="base", layer_sizes=(5000, 9000))
    arm = build_image(up, "c", None, seed="c-arm", platform="linux/arm64")
    amd = build_image(up, "c", None, seed="c-amd")
    c = build_index(up, "c", "v1", [amd, arm])
    root = tmp_path / "root"
    lock = lock_of(locked("a", "v1", a), locked("b", "v1", b), locked("c", "v1", c))
    sync(root, lock, up)
    assert verify_tree(root) > 0

    layout = Layout(root)
    store = layout.state / "blobs" / "sha256"
    fsyncs = [d for kind, d in events if kind == "fsync"]
    assert fsyncs.count(store) == 1  # not once per blob
    for repo in ("a", "b", "c"):
        assert fsyncs.count(root / "v2" / repo / "blobs") == 1
    for i, (kind, path) in enumerate(events):
        if kind != "rename" or path.parent.name != "manifests" or path.name != "v1":
            continue
        # Every directory renamed into before this tag was fsynced after that rename and
        # before the tag: what the tag reaches cannot be lost to a power failure after it.
        before = events[:i]
        for j, (k, earlier) in enumerate(before):
            tag_write = earlier.parent.name == "manifests" and earlier.name.startswith("v1")
            if k == "rename" and earlier.parent != path.parent and not tag_write:
                if earlier.parent == layout.tmp:
                    continue  # temp names, renamed away again at once
                assert ("fsync", earlier.parent) in before[j:], (earlier, path)
        # Manifests by digest in the tag's own directory went durable before it.
        by_digest = [
            j
            for j, (k, p) in enumerate(before)
            if k == "rename" and p.parent == path.parent and p.name.startswith("sha256:")
        ]
        assert by_digest and ("fsync", path.parent) in before[max(by_digest) :]
    # Referrers documents are in place before any tag: a new tag's signatures are there.
    renames = [(i, p) for i, (k, p) in enumerate(events) if k == "rename"]
    referrers = [i for i, p in renames if p.parent.name == "referrers"]
    tags = [i for i, p in renames if p.parent.name == "manifests" and p.name.startswith("v1")]
    assert referrers and tags and max(referrers) < min(tags)


# -- the TLS context is made only for HTTPS, and HTTPS is still verified ------------------------
def test_https_is_verified_by_the_lazily_made_transport(tmp_path: Path) -> None:
    client = RegistryClient(
        settings=lambda _r: RegistrySettings(),
        credentials=CredentialStore(environ={}),
        console=Console(verbosity=-1, err=io.StringIO()),
        retry=RetryPolicy(attempts=1),
    )
    untrusted = issue(make_ca(tmp_path / "ca"), tmp_path / "tls")
    with serve_https(untrusted) as port, client, pytest.raises(RegistrishError) as info:
        client.ping(f"127.0.0.1:{port}")
    assert "certificate" in str(info.value).lower()
