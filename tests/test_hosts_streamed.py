"""Host configs written a chunk at a time: the same bytes as when each was one string,
compared with the file on disk as they are made, the file rewritten only when its bytes
change, and never held whole (a 100,000-tag nginx config is 21 MB)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hosts import context_for
from support.trees import BuiltTree, build_tree

from registrish_lock.fsutil import replace_if_changed
from registrish_lock.serving.hosts import RENDERERS, base, write_if_changed
from registrish_lock.serving.hosts.base import HostContext, Output, TaggedDigest
from registrish_lock.serving.routes import Policy
from registrish_lock.tls import ServerTls

#: The files that grow with the tree, by the renderers of main at e3daaf1 (each rendered
#: as one string), for the contexts of `_variant` with the tmp dir written as @TMP@.
#: A deliberate change to a template changes these: print the new ones with
#: `_digest` and check the diff of the rendered text before updating them.
RENDERED_AT_E3DAAF1 = {
    ("plain", "nginx"): "6822dd1a1c90941f6df261a1569771db2879d70dc26af25d521d4b3aef108be0",
    ("plain", "caddy"): "9e8440d3b89b735840e04d4ec9d0d896dbb5f6fb66df71dad38a82e4f7f59cbc",
    ("plain", "apache"): "74666d222d130c9d0e92678db6babec2ebdf83be79bfc219551dc75afcacd207",
    ("plain", "netlify"): "dd061406939fc18dd9bebfa74dd15f3803cadce105b622b6247fe3442e3f3cdf",
    ("plain", "cloudflare"): "a8ddafbbb267a05a2ba1ebf9de7ef63d7864f5724d1bce68ebce6cb4474e1be9",
    ("plain", "s3"): "0a774710762458ad8e1056884039dc0e0c9a3956e00fe0145b53abaf36dc0fb3",
    ("tls", "nginx"): "81d075f0147b883b169befdfb9d7bb82272ece9cbd2dfc7651841fce6ae11973",
    ("tls", "caddy"): "fe0bcd7258f2b1e75a3b9943c0d5052919159f8259aa66b9d58e7a0210f9b459",
    ("tls", "apache"): "5f6753818560a36ecd1b11a8e952a8e7b9f5dc72341db17089dfd67a6a75dd5b",
    ("many", "nginx"): "df2ec664e71b9ba43a2cc06803a6eecd0f02a11fb60dd61b0608b4fc3d23fa48",
    ("many", "caddy"): "26101c1dbefd83aed184c4bc91f3d88c0c24f596490aca9d3a53ffe4732002b6",
    ("many", "apache"): "ddb681d369d503af0373fa8b3ce117fdf42fecc082f28eba3f5bc9db50168e59",
    ("many", "netlify"): "056bb03d109cf46ba581453924bfc2f89778a612dc59ef41da2e2f3982510f09",
    ("many", "s3"): "ef3be507551d38e92b26da35ea846450b9068fe68f9bda90fe7c679271537392",
}
GROWING = {"registrish.conf", "Caddyfile", "registrish-apache.conf", "_headers", "s3-metadata.json"}
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _tags(n: int, names: int = 3) -> tuple[TaggedDigest, ...]:
    return tuple(
        TaggedDigest(f"extra/app{i % names}", f"v{i}", f"sha256:{i:064x}", MANIFEST)
        for i in range(n)
    )


def _variant(name: str, tree: BuiltTree, tmp: Path) -> HostContext:
    ctx = context_for(tree, tmp, *RENDERERS)
    if name == "tls":
        tls = ServerTls(server_name="reg.example", certificate=tmp / "c.pem", key=tmp / "k.pem")
        return dataclasses.replace(ctx, tls=tls)
    if name == "many":  # past 1,024 tags nginx sizes its map hash
        tags = tuple(sorted(ctx.tag_digests + _tags(3000)))
        return dataclasses.replace(ctx, tag_digests=tags, policy=Policy(tag_cache_seconds=7))
    return ctx


def _digest(data: bytes, tmp: Path) -> str:
    return hashlib.sha256(data.replace(str(tmp.resolve()).encode(), b"@TMP@")).hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltTree, Path]:
    tmp = tmp_path_factory.mktemp("streamed")
    return build_tree(tmp / "public"), tmp


@pytest.mark.parametrize("chunk", [1, 7, base.CHUNK_CHARS])
def test_streamed_configs_are_the_bytes_rendered_whole_before(
    tree: tuple[BuiltTree, Path], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    built, tmp = tree
    monkeypatch.setattr(base, "CHUNK_CHARS", chunk)
    out = tmp / f"written-{chunk}"
    seen = set()
    for variant, host in RENDERED_AT_E3DAAF1:
        growing = [
            o
            for o in RENDERERS[host].render(_variant(variant, built, tmp)).outputs
            if o.path.name in GROWING
        ]
        assert len(growing) == 1, (variant, host)
        # made piece by piece, but Cloudflare's (at most 100 rules, checked whole)
        assert isinstance(growing[0].body, bytes) == (host == "cloudflare")
        path = out / variant / host
        assert write_if_changed(path, growing[0])
        written = path.read_bytes()
        assert written == growing[0].data
        seen.add((variant, host))
        assert _digest(written, tmp) == RENDERED_AT_E3DAAF1[(variant, host)], (variant, host)
    assert seen == set(RENDERED_AT_E3DAAF1)


def _chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"abcdef", b"abcXef"),  # a difference in the middle
        (b"abcdef", b"abcdefg"),  # longer
        (b"abcdef", b"abcde"),  # shorter: every chunk equal, the file goes on
        (b"abcdef", b""),
        (b"", b"abc"),
        (b"abc" * 400_000, b"abc" * 399_999 + b"abX"),  # past one copy block
    ],
)
def test_replace_if_changed_writes_exactly_the_new_bytes(
    tmp_path: Path, before: bytes, after: bytes
) -> None:
    path = tmp_path / "f"
    path.write_bytes(before)
    inode = path.stat().st_ino
    pieces = [after[i : i + 4] for i in range(0, len(after), 4)]
    assert replace_if_changed(path, _chunks(*pieces), tmp_dir=tmp_path)
    assert path.read_bytes() == after
    assert path.stat().st_ino != inode  # renamed into place, never written in place
    assert os.listdir(tmp_path) == ["f"]


def test_replace_if_changed_leaves_equal_bytes_untouched(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abcdef")
    before = path.stat()
    assert not replace_if_changed(path, _chunks(b"ab", b"", b"cde", b"f"))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    missing = tmp_path / "sub" / "new"
    assert replace_if_changed(missing, _chunks(b"x", b"y"))
    assert missing.read_bytes() == b"xy"


def test_an_error_while_rendering_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old bytes")

    def failing() -> Iterator[bytes]:
        yield b"old"
        yield b" and new"
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        replace_if_changed(path, failing(), tmp_dir=tmp_path)
    assert path.read_bytes() == b"old bytes"
    assert os.listdir(tmp_path) == ["f"]


def test_a_large_config_is_never_held_whole(tmp_path: Path) -> None:
    ctx = HostContext(
        root=tmp_path / "public",
        hosts_dir=tmp_path / "hosts",
        listen_host="127.0.0.1",
        listen_port=80,
        policy=Policy(),
        tag_digests=_tags(40_000, names=40),
    )
    for host in ("nginx", "caddy", "apache"):
        (out,) = [o for o in RENDERERS[host].render(ctx).outputs if o.path.name in GROWING]
        tracemalloc.start()
        try:
            assert write_if_changed(out.path, out)
            written = tracemalloc.get_traced_memory()[1]
            assert not write_if_changed(out.path, out)  # compared a chunk at a time
            compared = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        size = out.path.stat().st_size
        assert size > 6_000_000, host
        # a slice of lines and a chunk at once (~1 MB), never the text nor its bytes
        assert written < size / 4 and compared < size / 4, (host, size, written, compared)


def test_small_outputs_stay_bytes(tmp_path: Path, tree: tuple[BuiltTree, Path]) -> None:
    built, tmp = tree
    ctx = _variant("plain", built, tmp)
    (listen,) = [
        o for o in RENDERERS["apache"].render(ctx).outputs if o.path.name.endswith("listen.conf")
    ]
    assert isinstance(listen.body, bytes) and list(listen.chunks()) == [listen.body]
    assert Output(tmp_path / "x", lambda: iter(["a", "b"])).data == b"ab"
