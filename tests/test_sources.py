"""Local sources (`oci:PATH`, `docker-archive:FILE`) without servers: the layouts are real
OCI layouts written by the test bed (`write_random_image`), the archives real tars in the
shape `docker save`/skopeo write. Pull clients against them: test_sources_e2e.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from testbed.images import write_random_image

from registrish_lock.cli import main
from registrish_lock.errors import (
    ConfigError,
    ExitCode,
    IntegrityError,
    NotFoundError,
    ReferenceError_,
)
from registrish_lock.lock.config import check_local_sources, load_config
from registrish_lock.lock.discovery import ReferrersUpstream
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.lock.resolve import resolve
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import parse_manifest
from registrish_lock.oci.reference import Reference, default_target_name, parse_source
from registrish_lock.upstream.docker_archive import DockerArchiveSource
from registrish_lock.upstream.local import DOCKER_LAYER, LocalSourceError, tag_of_ref_name
from registrish_lock.upstream.oci_layout import OciLayoutSource
from registrish_lock.upstream.protocols import BlobRequest, Upstream
from registrish_lock.upstream.sources import SourceRouter

REF_NAME = "org.opencontainers.image.ref.name"
TAGS = ("3.18", "3.19", "3.20", "3.20.1", "latest", "edge")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def no_registry() -> Upstream:
    raise AssertionError("a local-only config must not create a registry client")


def oci(path: str) -> Reference:
    return parse_source(f"oci:{path}")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """`layouts/app`: one random image per tag of TAGS (seed = position)."""
    path = tmp_path / "layouts" / "app"
    for seed, tag in enumerate(TAGS):
        write_random_image(path, tag, (2048, 512), seed=seed)
    return path


def tagged_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(
        str(m["digest"])
        for m in index["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == tag
    )


def write_config(tmp: Path, images: str) -> Path:
    config = tmp / "registrish.toml"
    config.write_text(f'[registry]\nroot = "public"\n\n{images}')
    return config


# --- references ----------------------------------------------------------------------------


def test_parse_source_keeps_local_paths_as_written() -> None:
    ref = parse_source("oci:layouts/app")
    assert (ref.registry, ref.repository, ref.is_local) == ("oci", "layouts/app", True)
    assert ref.repository_ref == "oci:layouts/app"
    assert parse_source(ref.repository_ref) == ref  # the lock's string round-trips
    archive = parse_source("docker-archive:../images/alpine-3.20.tar")
    assert archive.repository_ref == "docker-archive:../images/alpine-3.20.tar"
    assert default_target_name(archive) == "alpine-3.20"
    assert default_target_name(ref) == "app"
    assert default_target_name(parse_source("oci:.")) == ""
    registry = parse_source("127.0.0.1:5000/team/app")
    assert (registry.registry, registry.is_local) == ("127.0.0.1:5000", False)
    assert parse_source("alpine").repository_ref == "docker.io/library/alpine"


@pytest.mark.parametrize("text", ["oci:", "oci:layout:v1", "oci: x", "docker-archive:a\nb.tar"])
def test_parse_source_rejects_bad_local_paths(text: str) -> None:
    with pytest.raises(ReferenceError_):
        parse_source(text)


def test_tag_of_ref_name() -> None:
    assert tag_of_ref_name("3.20") == "3.20"
    assert tag_of_ref_name("docker.io/library/alpine:3.20") == "3.20"
    assert tag_of_ref_name("localhost:5000/app") is None
    assert tag_of_ref_name("app@sha256:" + "a" * 64) is None
    assert tag_of_ref_name("-bad") is None


# --- config --------------------------------------------------------------------------------


def test_config_resolves_paths_against_its_directory(layout: Path, tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path, '[[image]]\nsource = "oci:layouts/app"\ntags = ["edge"]\n')
    )
    (image,) = config.images
    assert image.name == "app"
    assert image.source.repository_ref == "oci:layouts/app"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("oci:layouts/nope", "no such directory"),
        ("docker-archive:nope.tar", "no such file"),
        ("oci:layouts/app/index.json", "no such directory"),
        ("docker-archive:layouts/app", "no such file"),
    ],
)
def test_config_rejects_missing_local_paths(
    layout: Path, tmp_path: Path, source: str, problem: str
) -> None:
    path = write_config(tmp_path, f'[[image]]\nsource = "{source}"\nname = "x"\ntags = ["v1"]\n')
    config = load_config(path)  # loads: serve, check and gc need no source
    with pytest.raises(ConfigError) as caught:
        check_local_sources(config)
    assert caught.value.key == "image[0].source"
    assert problem in caught.value.message
    assert "\n" not in caught.value.message


def test_config_needs_a_name_when_the_path_gives_none(tmp_path: Path) -> None:
    (tmp_path / "My_Layout").mkdir()
    for source in ("oci:My_Layout", "oci:."):
        path = write_config(tmp_path, f'[[image]]\nsource = "{source}"\ntags = ["v1"]\n')
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert caught.value.key == "image[0].name"
        assert "is required" in caught.value.message
    path = write_config(
        tmp_path, '[[image]]\nsource = "oci:My_Layout"\nname = "mine"\ntags = ["v1"]\n'
    )
    assert load_config(path).images[0].name == "mine"


# --- OCI layouts ---------------------------------------------------------------------------


def test_layout_tags_are_the_ref_name_annotations(layout: Path, tmp_path: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    untagged = dict(index["manifests"][0])
    untagged.pop("annotations")
    full = {**index["manifests"][1], "annotations": {REF_NAME: "example.com/app:full"}}
    index["manifests"] += [untagged, full]
    (layout / "index.json").write_text(json.dumps(index))
    source = OciLayoutSource(tmp_path)
    assert source.list_tags(oci("layouts/app")) == sorted([*TAGS, "full"])
    info = source.head_manifest(oci("layouts/app"), "3.20")
    assert info.digest == tagged_digest(layout, "3.20")
    assert info.media_type == mediatypes.OCI_MANIFEST


def test_layout_conflicting_tags_are_refused(layout: Path, tmp_path: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({**index["manifests"][0], "annotations": {REF_NAME: TAGS[1]}})
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(LocalSourceError, match="names two images"):
        OciLayoutSource(tmp_path).list_tags(oci("layouts/app"))


def test_layout_without_index_json(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalSourceError, match=r"oci:empty: not an OCI image layout"):
        OciLayoutSource(tmp_path).list_tags(oci("empty"))


def test_layout_tag_not_found(layout: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no tag '9\.9'") as caught:
        OciLayoutSource(tmp_path).head_manifest(oci("layouts/app"), "9.9")
    assert caught.value.hint is not None and "3.18" in caught.value.hint


def test_layout_manifest_and_blob_are_verified(layout: Path, tmp_path: Path) -> None:
    source = OciLayoutSource(tmp_path)
    repo = oci("layouts/app")
    digest = tagged_digest(layout, "edge")
    fetched = source.get_manifest(repo, "edge", expected_digest=digest)
    manifest = parse_manifest(fetched.data, content_type=fetched.media_type, expected_digest=digest)
    layer = manifest.layers[0]
    dest = tmp_path / "out" / "blob.partial"
    dest.parent.mkdir()
    dest.write_bytes(b"stale bytes of an earlier run")
    seen: list[int] = []
    source.fetch_blob(BlobRequest(repo, layer.digest, layer.size, dest, on_bytes=seen.append))
    assert sha(dest.read_bytes()) == layer.digest and sum(seen) == layer.size
    assert source.request_count == 2

    # flip one byte of the layer in the layout: the copy fails and leaves nothing behind
    blob = layout / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"oci:layouts/app: blob {layer.digest}"):
        source.fetch_blob(BlobRequest(repo, layer.digest, layer.size, dest))
    assert not dest.exists()
    with pytest.raises(IntegrityError, match="not the expected"):
        source.get_manifest(repo, "edge", expected_digest=tagged_digest(layout, "3.18"))


def test_layout_missing_blob_is_not_found(layout: Path, tmp_path: Path) -> None:
    digest = tagged_digest(layout, "edge")
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).unlink()
    with pytest.raises(NotFoundError, match="is missing"):
        OciLayoutSource(tmp_path).get_manifest(oci("layouts/app"), "edge")


def test_layout_symlinks_must_stay_inside(layout: Path, tmp_path: Path) -> None:
    digest = tagged_digest(layout, "edge")
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    outside = tmp_path / "outside.json"
    shutil.move(blob, outside)
    blob.symlink_to(outside)
    with pytest.raises(LocalSourceError, match="symlink leading outside the layout"):
        OciLayoutSource(tmp_path).get_manifest(oci("layouts/app"), "edge")
    # a symlink that stays inside the layout is fine (layouts deduplicate that way)
    inside = layout / "blobs" / "sha256" / "moved"
    shutil.move(outside, inside)
    blob.unlink()
    blob.symlink_to("moved")
    assert OciLayoutSource(tmp_path).get_manifest(oci("layouts/app"), "edge").digest == digest


def test_resolve_selects_over_annotations_without_a_registry(layout: Path, tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            '[[image]]\nsource = "oci:layouts/app"\nversions = ">=3.19"\nlatest = 2\n\n'
            '[[image]]\nsource = "oci:layouts/app"\nname = "exact"\ntags = ["edge"]\n'
            'match = "^3\\\\.18$"\n',
        )
    )
    with SourceRouter(base=tmp_path, registry=no_registry) as router:
        result = resolve(config, None, router)
    got = {(t.name, t.tag): t for t in result.lock.tags}
    assert sorted(got) == [("app", "3.20"), ("app", "3.20.1"), ("exact", "3.18"), ("exact", "edge")]
    for (_, tag), entry in got.items():
        assert entry.digest == tagged_digest(layout, tag)
        assert entry.source == "oci:layouts/app"
        assert entry.total_size > 2048 + 512


# --- docker-archive ------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            _add(tar, name, data)
    return out.getvalue()


def write_archive(
    path: Path, images: list[tuple[list[str], list[bytes]]], *, corrupt_layer: bool = False
) -> list[bytes]:
    """A tar in skopeo's `docker-archive` shape: `<hex>.tar` layers, `<id>/layer.tar`
    symlinks to them, `<hex>.json` configs, `manifest.json` and `repositories`.
    Returns each image's config bytes."""
    entries: list[dict[str, Any]] = []
    configs = []
    with tarfile.open(path, "w") as tar:
        for repo_tags, layers in images:
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
                },
                sort_keys=True,
            ).encode()
            configs.append(config)
            names = []
            for layer in layers:
                hexd = sha(layer).removeprefix("sha256:")
                stored = bytes([layer[0] ^ 1]) + layer[1:] if corrupt_layer else layer
                _add(tar, f"{hexd}.tar", stored)
                link = tarfile.TarInfo(f"id{hexd[:8]}/layer.tar")
                link.type, link.linkname = tarfile.SYMTYPE, f"../{hexd}.tar"
                tar.addfile(link)
                names.append(f"id{hexd[:8]}/layer.tar")
            config_name = sha(config).removeprefix("sha256:") + ".json"
            _add(tar, config_name, config)
            entries.append({"Config": config_name, "RepoTags": repo_tags, "Layers": names})
        _add(tar, "manifest.json", json.dumps(entries).encode())
        _add(tar, "repositories", b"{}")
    return configs


def test_archive_synthesises_a_reproducible_v2s2_manifest(tmp_path: Path) -> None:
    layers = [_layer({"bin/a": b"a" * 3000}), _layer({"etc/b": b"b" * 10})]
    other = [_layer({"bin/c": b"c"})]
    configs = write_archive(
        tmp_path / "app.tar",
        [(["docker.io/library/app:v1", "app:latest"], layers), (["app:v2"], other)],
    )
    repo = parse_source("docker-archive:app.tar")
    source = DockerArchiveSource(tmp_path)
    assert source.list_tags(repo) == ["latest", "v1", "v2"]
    fetched = source.get_manifest(repo, "v1")
    assert source.head_manifest(repo, "latest").digest == fetched.digest
    manifest = parse_manifest(fetched.data, expected_digest=fetched.digest)
    assert manifest.media_type == mediatypes.DOCKER_MANIFEST
    assert manifest.config is not None and manifest.config.digest == sha(configs[0])
    # layers exactly as stored: their digests are the config's diff_ids
    assert [(x.digest, x.size, x.media_type) for x in manifest.layers] == [
        (sha(layer), len(layer), DOCKER_LAYER) for layer in layers
    ]
    # docker's own layout of the document: 3-space indentation, fixed key order
    assert fetched.data.startswith(b'{\n   "schemaVersion": 2,\n   "mediaType": ')
    # the same archive content rebuilt gives the same bytes
    write_archive(tmp_path / "again.tar", [(["x:v1"], layers)])
    again = DockerArchiveSource(tmp_path).get_manifest(
        parse_source("docker-archive:again.tar"), "v1"
    )
    assert again.data == fetched.data

    for blob in manifest.blobs:
        dest = tmp_path / "out" / blob.digest
        source.fetch_blob(BlobRequest(repo, blob.digest, blob.size, dest))
        assert sha(dest.read_bytes()) == blob.digest


def test_archive_errors(tmp_path: Path) -> None:
    layers = [_layer({"bin/a": b"a" * 100})]
    write_archive(tmp_path / "bad.tar", [(["app:v1"], layers)], corrupt_layer=True)
    with pytest.raises(IntegrityError, match="but the config says"):
        DockerArchiveSource(tmp_path).list_tags(parse_source("docker-archive:bad.tar"))

    write_archive(tmp_path / "good.tar", [(["app:v1"], layers)])
    with pytest.raises(NotFoundError, match="no image tagged 'v9'"):
        DockerArchiveSource(tmp_path).head_manifest(parse_source("docker-archive:good.tar"), "v9")

    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        _add(tar, "hello", b"hi")
    with pytest.raises(LocalSourceError, match=r"no manifest\.json"):
        DockerArchiveSource(tmp_path).list_tags(parse_source("docker-archive:plain.tar"))

    with tarfile.open(tmp_path / "zipped.tar", "w:gz") as tar:
        _add(tar, "manifest.json", b"[]")
    with pytest.raises(LocalSourceError, match="not an uncompressed tar"):
        DockerArchiveSource(tmp_path).list_tags(parse_source("docker-archive:zipped.tar"))

    write_archive(tmp_path / "two.tar", [(["a:v1"], layers), (["b:v1"], [_layer({"x": b"x"})])])
    with pytest.raises(LocalSourceError, match="names two images"):
        DockerArchiveSource(tmp_path).list_tags(parse_source("docker-archive:two.tar"))


def test_router_dispatches_by_source_and_counts(layout: Path, tmp_path: Path) -> None:
    write_archive(tmp_path / "app.tar", [(["app:v1"], [_layer({"a": b"a"})])])
    calls: list[str] = []

    class Remote:
        request_count = 7

        def list_tags(self, repo: Reference) -> list[str]:
            calls.append(str(repo))
            return ["r1"]

        def list_referrers(self, repo: Reference, digest: str) -> Any:
            calls.append(f"referrers {digest[:10]}")
            return []

        def head_manifest(self, repo: Reference, ref: str) -> Any:
            raise NotImplementedError

        def get_manifest(
            self, repo: Reference, ref: str, *, expected_digest: str | None = None
        ) -> Any:
            raise NotImplementedError

        def fetch_blob(self, blob: BlobRequest) -> None:
            raise NotImplementedError

        def close(self) -> None:
            calls.append("closed")

    router = SourceRouter(base=tmp_path, registry=no_registry)
    assert router.list_tags(oci("layouts/app")) == sorted(TAGS)
    assert router.list_tags(parse_source("docker-archive:app.tar")) == ["v1"]
    router.get_manifest(oci("layouts/app"), "edge")
    assert router.request_count == 1  # one manifest read; listings are not counted
    router.close()
    with SourceRouter(base=tmp_path, registry=Remote) as remote:
        assert remote.list_tags(parse_source("example.com/team/app")) == ["r1"]
        remote_repo = parse_source("example.com/team/app")
        assert remote.list_referrers(remote_repo, "sha256:" + "a" * 64) == []
        assert remote.request_count == 7
        assert isinstance(remote, ReferrersUpstream)  # what resolve checks for `referrers`
        edge = tagged_digest(layout, "edge")
        assert remote.list_referrers(oci("layouts/app"), edge) is None  # → tag schema fallback
    assert calls == ["example.com/team/app", "referrers sha256:aaa", "closed"]


# --- through the CLI -----------------------------------------------------------------------


def test_cli_lock_twice_is_byte_identical_and_sync_needs_no_network(
    layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_archive(tmp_path / "tools.tar", [(["tools:1.0"], [_layer({"bin/t": b"t" * 999})])])
    config = write_config(
        tmp_path,
        '[[image]]\nsource = "oci:layouts/app"\nmatch = "^3\\\\.2"\n\n'
        '[[image]]\nsource = "docker-archive:tools.tar"\ntags = ["1.0"]\n',
    )
    lock_path = tmp_path / "registrish.lock"
    assert main(["lock", "-c", str(config)]) == 0
    first = lock_path.read_bytes()
    assert main(["lock", "-c", str(config)]) == 0
    assert lock_path.read_bytes() == first
    lock_path.unlink()  # from scratch again: the synthesised manifest is reproducible
    assert main(["lock", "-c", str(config)]) == 0
    assert lock_path.read_bytes() == first
    lock = read_lock(lock_path)
    assert {t.source for t in lock.tags} == {"oci:layouts/app", "docker-archive:tools.tar"}
    assert sorted(t.tag for t in lock.tags) == ["1.0", "3.20", "3.20.1"]

    assert main(["sync", "-c", str(config)]) == 0
    for t in lock.tags:
        served = tmp_path / "public" / "v2" / t.name / "manifests" / t.tag
        assert sha(served.read_bytes()) == t.digest
    capsys.readouterr()
    assert main(["sync", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["upstream_requests"] == 0

    # The sources go away (an unmounted disk): the tree is still managed; only reading
    # sources again needs them, and says which one is missing.
    (tmp_path / "tools.tar").unlink()
    shutil.rmtree(tmp_path / "layouts" / "app")
    assert main(["sync", "-q", "-c", str(config)]) == 0
    assert main(["check", "--local", "-q", "-c", str(config)]) == 0
    assert main(["gc", "--dry-run", "-q", "-c", str(config)]) == 0
    assert main(["hosts", "-q", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["lock", "--check", "-c", str(config)]) == 0
    assert main(["lock", "-c", str(config)]) == ExitCode.USAGE
    assert "image[0].source: no such directory" in capsys.readouterr().err


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_errors_and_exit_codes(
    layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = write_config(tmp_path, '[[image]]\nsource = "oci:layouts/gone"\ntags = ["v1"]\n')
    code, err = _run(["lock", "-c", str(missing)], capsys)
    assert code == ExitCode.USAGE and "image[0].source: no such directory" in err
    assert "Traceback" not in err

    (tmp_path / "layouts" / "bare").mkdir()
    bare = write_config(tmp_path, '[[image]]\nsource = "oci:layouts/bare"\ntags = ["v1"]\n')
    code, err = _run(["lock", "-c", str(bare)], capsys)
    assert code == ExitCode.USAGE and "no index.json" in err

    config = write_config(tmp_path, '[[image]]\nsource = "oci:layouts/app"\ntags = ["nope"]\n')
    code, err = _run(["lock", "-c", str(config)], capsys)
    assert code == ExitCode.UPSTREAM and "no tag 'nope'" in err

    config = write_config(tmp_path, '[[image]]\nsource = "oci:layouts/app"\ntags = ["edge"]\n')
    assert main(["lock", "-c", str(config)]) == 0
    entry = read_lock(tmp_path / "registrish.lock").tags[0]
    manifest = json.loads((layout / "blobs" / "sha256" / entry.digest[7:]).read_bytes())
    biggest = max(manifest["layers"], key=lambda layer: layer["size"])["digest"]
    blob = layout / "blobs" / "sha256" / biggest[7:]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    code, err = _run(["sync", "-c", str(config)], capsys)
    assert code == ExitCode.INTEGRITY and biggest in err and "Traceback" not in err
    assert not (tmp_path / "public" / "v2" / "app" / "manifests" / "edge").exists()
