"""Air-gapped sources end to end: images leave the real upstream as an OCI layout and a
`docker-archive` (both written by skopeo), then `lock` → `sync` → `serve` → skopeo and
containerd pull from the static tree, with no registry reachable from the config."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from testbed.clients import Containerd, Dockerd, ctr_pull, docker_pull, docker_run, skopeo_copy
from testbed.images import DEFAULT_OUTPUT, BaseLayout, SeededUpstream
from testbed.procs import ServerGroup, require_binary, run
from testbed.registrish import registrish, start_registrish_serve

from registrish_lock.lock.lockfile import Lock, LockedTag, read_lock

pytestmark = pytest.mark.slow

CONFIG = """\
[registry]
root = "public"

[[image]]
source = "oci:layouts/mirror"
name = "multi"
tags = ["v1"]

[[image]]
source = "oci:layouts/mirror"
name = "many"
versions = ">=3.19,<4"

[[image]]
source = "docker-archive:archives/app.tar"
tags = ["v1"]
"""


def skopeo_export(src: str, dest: str) -> None:
    """`skopeo copy docker://SRC DEST` from the upstream (plain HTTP), every platform."""
    skopeo = require_binary("skopeo")
    argv = [skopeo, "copy", "-q", "--src-tls-verify=false"]
    if not dest.startswith("docker-archive:"):  # an archive holds one image, no index
        argv.append("--all")
    run([*argv, f"docker://{src}", dest], what="skopeo export")


@dataclass(frozen=True)
class Offline:
    config: Path
    lock: Lock
    lock_bytes: bytes

    def tag(self, name: str, tag: str) -> LockedTag:
        return next(t for t in self.lock.tags if (t.name, t.tag) == (name, tag))


@pytest.fixture
def offline(seeded_upstream: SeededUpstream, tmp_path: Path) -> Offline:
    """The air-gapped side: a layout and an archive exported from the upstream, then locked."""
    host = seeded_upstream.host
    layout = tmp_path / "layouts" / "mirror"
    layout.parent.mkdir()
    skopeo_export(f"{host}/multi:v1", f"oci:{layout}:v1")
    for tag in ("3.18", "3.19", "3.20"):
        skopeo_export(f"{host}/many:{tag}", f"oci:{layout}:{tag}")
    (tmp_path / "archives").mkdir()
    skopeo_export(f"{host}/app-docker:v1", f"docker-archive:{tmp_path}/archives/app.tar:app:v1")
    config = tmp_path / "registrish.toml"
    config.write_text(CONFIG)
    registrish(config, "lock")
    lock_path = tmp_path / "registrish.lock"
    return Offline(config, read_lock(lock_path), lock_path.read_bytes())


@pytest.fixture
def served(offline: Offline, servers: ServerGroup, tmp_path: Path) -> str:
    registrish(offline.config, "sync")
    serving = start_registrish_serve(log_dir=tmp_path, config=offline.config, name="serve")
    servers.add(serving.server)
    return serving.host


def test_lock_selects_from_the_layout_and_keeps_upstream_digests(
    offline: Offline, seeded_upstream: SeededUpstream
) -> None:
    got = sorted((t.name, t.tag, t.source) for t in offline.lock.tags)
    assert got == [
        ("app", "v1", "docker-archive:archives/app.tar"),
        ("many", "3.19", "oci:layouts/mirror"),
        ("many", "3.20", "oci:layouts/mirror"),
        ("multi", "v1", "oci:layouts/mirror"),
    ]
    # an OCI layout copied with skopeo keeps the upstream's manifests byte for byte
    upstream_multi = seeded_upstream.get("multi", "v1")
    multi = offline.tag("multi", "v1")
    assert multi.digest == upstream_multi.digest
    assert {p.platform: p.digest for p in multi.platforms} == dict(upstream_multi.platforms)
    assert offline.tag("many", "3.20").digest == seeded_upstream.get("many", "3.20").digest
    # the archive's manifest is synthesised: same config, layers uncompressed (diff_ids)
    app = offline.tag("app", "v1")
    assert app.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert app.digest != seeded_upstream.get("app-docker", "v1").digest

    # lock again, and from scratch: byte-identical
    registrish(offline.config, "lock")
    lock_path = offline.config.with_suffix(".lock")
    assert lock_path.read_bytes() == offline.lock_bytes
    lock_path.unlink()
    registrish(offline.config, "lock")
    assert lock_path.read_bytes() == offline.lock_bytes
    assert registrish(offline.config, "lock", "--check").returncode == 0


def test_skopeo_pulls_every_locked_tag(offline: Offline, served: str, tmp_path: Path) -> None:
    for i, entry in enumerate(offline.lock.tags):
        by_tag = skopeo_copy(
            f"{served}/{entry.name}:{entry.tag}", tmp_path / f"t{i}", all_platforms=True
        )
        assert by_tag.digest == entry.digest
        assert sorted(by_tag.instances) == sorted(p.digest for p in entry.platforms)
        ref = f"{served}/{entry.name}@{entry.digest}"
        by_digest = skopeo_copy(ref, tmp_path / f"d{i}", all_platforms=True)
        assert by_digest.digest == entry.digest
        for j, child in enumerate(entry.platforms):  # each platform alone, as a client picks it
            one = skopeo_copy(f"{served}/{entry.name}@{child.digest}", tmp_path / f"p{i}-{j}")
            assert one.digest == child.digest


def test_containerd_pulls_the_docker_archive_image(
    offline: Offline, served: str, containerd: Containerd
) -> None:
    entry = offline.tag("app", "v1")
    result = ctr_pull(containerd, f"{served}/app:v1")
    assert result.digest == entry.digest
    assert "complete" in result.check


def test_docker_runs_the_docker_archive_image(
    offline: Offline, served: str, dockerd: Dockerd
) -> None:
    entry = offline.tag("app", "v1")
    pulled = docker_pull(dockerd, f"{served}/app:v1")
    assert pulled.digest == entry.digest
    assert docker_run(dockerd, f"{served}/app:v1").strip() == DEFAULT_OUTPUT


def test_a_real_docker_save_archive(
    offline: Offline, seeded_upstream: SeededUpstream, dockerd: Dockerd, servers: ServerGroup
) -> None:
    """`docker save` (dockerd's own format: `<id>/layer.tar`, `<hex>.json`) locks to the same
    synthesised manifest as skopeo's archive of the same image, and round-trips into docker."""
    upstream_ref = seeded_upstream.get("app-docker", "v1").ref
    docker_pull(dockerd, upstream_ref)
    saved = offline.config.parent / "archives" / "saved.tar"
    env = {"DOCKER_CONFIG": str(dockerd.cli_config)}
    run(
        [require_binary("docker"), "-H", dockerd.host, "save", "-o", str(saved), upstream_ref],
        env=env,
    )
    config = offline.config.parent / "saved.toml"
    config.write_text(
        '[registry]\nroot = "public-saved"\n\n'
        '[[image]]\nsource = "docker-archive:archives/saved.tar"\nname = "app"\ntags = ["v1"]\n'
    )
    registrish(config, "lock")
    (entry,) = read_lock(config.with_suffix(".lock")).tags
    assert entry.source == "docker-archive:archives/saved.tar"
    assert entry.digest == offline.tag("app", "v1").digest

    registrish(config, "sync")
    serving = start_registrish_serve(log_dir=config.parent, config=config, name="serve-saved")
    servers.add(serving.server)
    pulled = docker_pull(dockerd, f"{serving.host}/app:v1")  # fresh: every layer fetched
    assert pulled.digest == entry.digest
    assert docker_run(dockerd, f"{serving.host}/app:v1").strip() == DEFAULT_OUTPUT


def test_an_umoci_layout_with_a_hand_written_index(base_layout: BaseLayout, tmp_path: Path) -> None:
    """The test bed's umoci layout: manifests by umoci, the `multi` index written by hand."""
    tmp = tmp_path
    shutil.copytree(base_layout.path, tmp / "base", symlinks=True)
    config = tmp / "registrish.toml"
    config.write_text(
        '[registry]\nroot = "public"\n\n[[image]]\nsource = "oci:base"\nmatch = "^(multi|v1)$"\n'
    )
    registrish(config, "lock")
    index = json.loads((tmp / "base" / "index.json").read_text())
    want = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    lock = read_lock(config.with_suffix(".lock"))
    assert {t.tag: t.digest for t in lock.tags} == {"multi": want["multi"], "v1": want["v1"]}
    assert {p.platform for p in lock.tags[0].platforms} == {"linux/amd64", "linux/arm64"}
    registrish(config, "sync")
    out = registrish(config, "check", "--local", "--deep", "--json")
    assert json.loads(out.stdout)["ok"] is True
