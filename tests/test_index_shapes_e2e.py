"""Index shapes the seeded images do not have, end to end against the real upstream:
a child descriptor with no `platform` (optional in the OCI spec: nested indexes, artifact
indexes) and platform names written differently by the index and by the config
(`linux/arm64` vs `linux/arm64/v8`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from testbed.clients import skopeo_copy
from testbed.images import SeededUpstream, skopeo_push
from testbed.upstream import get_manifest, put_manifest

from registrish_lock.cli import main
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.oci import mediatypes

pytestmark = pytest.mark.slow


def _config(tmp: Path, host: str, source: str, tag: str, platforms: str = "") -> Path:
    config = tmp / "registrish.toml"
    extra = f"platforms = {platforms}\n" if platforms else ""
    config.write_text(
        f'[registry]\nroot = "public"\n\n[[image]]\nsource = "{host}/{source}"\n'
        f'name = "shapes"\ntags = ["{tag}"]\n{extra}\n[registries."{host}"]\ninsecure = true\n'
    )
    return config


@pytest.fixture(scope="module")
def nested(seeded_upstream: SeededUpstream) -> tuple[str, dict[str, str]]:
    """`shapes/nested:v1`: an OCI index whose children are an amd64 image (with a platform)
    and the seeded `multi:v1` index (with none). Returns its digest and the children's."""
    registry, layout = seeded_upstream.registry, seeded_upstream.layout
    skopeo_push(
        registry, layout.path, layout.index_tag, "shapes/nested", "base", all_platforms=True
    )
    inner = get_manifest(registry.url, "shapes/nested", "base")
    image = json.loads(inner.body)["manifests"][0]
    outer = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            image,
            {"mediaType": mediatypes.OCI_INDEX, "digest": inner.digest, "size": len(inner.body)},
        ],
    }
    body = json.dumps(outer, indent=2).encode()
    digest = put_manifest(registry.url, "shapes/nested", "v1", body, mediatypes.OCI_INDEX)
    return digest, {"image": image["digest"], "inner": inner.digest}


def test_a_child_without_platform_is_locked_synced_and_pulled(
    tmp_path: Path,
    seeded_upstream: SeededUpstream,
    nested: tuple[str, dict[str, str]],
    serve_tree: Callable[[Path], str],
) -> None:
    digest, children = nested
    config = _config(tmp_path, seeded_upstream.host, "shapes/nested", "v1")
    assert main(["-c", str(config), "lock"]) == 0
    lock_path = tmp_path / "registrish.lock"
    first = lock_path.read_bytes()
    (entry,) = read_lock(lock_path).tags
    assert entry.digest == digest
    assert {p.platform: p.digest for p in entry.platforms} == {
        "linux/amd64": children["image"],
        "": children["inner"],
    }
    # the lock reads back for every later command, `lock` itself included
    assert main(["-c", str(config), "lock"]) == 0
    assert lock_path.read_bytes() == first
    assert main(["-c", str(config), "sync", "-q"]) == 0
    assert main(["-c", str(config), "check", "--local", "--deep", "-q"]) == 0
    host = serve_tree(tmp_path / "public")
    # skopeo's --all does not descend into a nested index (the same from docker-registry):
    # it pulls the tag for its own platform, and the inner index by digest
    pulled = skopeo_copy(f"{host}/shapes:v1", tmp_path / "pulled", arch="amd64")
    assert pulled.digest == children["image"]
    inner = skopeo_copy(
        f"{host}/shapes@{children['inner']}", tmp_path / "inner", all_platforms=True
    )
    assert inner.digest == children["inner"]


def test_a_platform_filter_on_children_without_platform_explains_itself(
    tmp_path: Path,
    seeded_upstream: SeededUpstream,
    nested: tuple[str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(tmp_path, seeded_upstream.host, "shapes/nested", "v1", '["linux/s390x"]')
    assert main(["-c", str(config), "lock"]) == 3
    err = capsys.readouterr().err
    assert "none of the platforms linux/s390x" in err and "it offers linux/amd64" in err
    assert not (tmp_path / "registrish.lock").exists()


@pytest.mark.parametrize("wanted", ["linux/arm64/v8", "linux/aarch64"])
def test_platform_spellings_match_as_containerd_normalises_them(
    wanted: str, tmp_path: Path, seeded_upstream: SeededUpstream
) -> None:
    pushed = seeded_upstream["multi:v1"]
    assert "linux/arm64" in pushed.platforms  # the index says arm64 with no variant
    config = _config(tmp_path, seeded_upstream.host, "multi", "v1", f'["{wanted}"]')
    assert main(["-c", str(config), "lock"]) == 0
    (entry,) = read_lock(tmp_path / "registrish.lock").tags
    assert [(p.platform, p.digest) for p in entry.platforms] == [
        ("linux/arm64", pushed.platforms["linux/arm64"])
    ]
