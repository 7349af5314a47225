"""Hostile content from the upstream: manifests whose descriptors try path escapes, unknown
algorithms, upper-case hex, lying sizes, media types with slashes and newlines, a 5 MiB
manifest, an index whose child is itself, and non-distributable layers with ``urls``.

docker-registry refuses to store most of these (it validates descriptors on push), so they
are served by the test bed's CountingProxy in front of the real upstream, under the real
``app-oci`` repository: blobs that do exist are still fetched from docker-registry.
``lock`` and ``sync`` must refuse each with one clear error (or, for foreign layers, follow
the documented policy), and nothing may be written outside ``root``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import assert_clean_failure, run_cli
from support.trees import verify_tree
from testbed.images import SeededUpstream
from testbed.upstream import MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, CountingProxy, Respond
from testbed.upstream import get_manifest as raw_manifest

from registrish_lock.tree.layout import Layout

# `backoffs` (tests/conftest.py): real retries, shortened sleeps.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("backoffs")]

TAG = "hostile"


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def serve(proxy: CountingProxy, documents: dict[str, tuple[bytes, str]]) -> None:
    """Answer ``/v2/app-oci/manifests/<ref>`` for each ref in ``documents`` (body, type),
    like a registry would (HEAD and GET, with ``Docker-Content-Digest``)."""

    def fault(method: str, path: str) -> Respond | None:
        for ref, (body, media_type) in documents.items():
            if path == f"/v2/app-oci/manifests/{ref}" and method in ("GET", "HEAD"):
                headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(body)}
                return Respond(200, body, headers)
        return None

    proxy.fault = fault
    assert MANIFEST_ACCEPT  # the real upstream needs it; our answers ignore it


def base_doc(seeded: SeededUpstream) -> dict[str, Any]:
    fetched = raw_manifest(seeded.url, "app-oci", "v1")
    doc: dict[str, Any] = json.loads(fetched.body)
    assert doc.get("mediaType", OCI_MANIFEST) == OCI_MANIFEST and "layers" in doc
    return doc


def as_tag(
    doc: dict[str, Any] | bytes, media_type: str = OCI_MANIFEST
) -> dict[str, tuple[bytes, str]]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return {TAG: (body, media_type), digest_of(body): (body, media_type)}


def layer0(mutate: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], Any]:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        mutate(doc["layers"][0])
        return doc

    return apply


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


# name -> (make the served documents from the real manifest, exit code, error must say)
LOCK_REFUSES: dict[
    str, tuple[Callable[[dict[str, Any]], dict[str, tuple[bytes, str]]], int, str]
] = {
    "digest-path-escape": (
        lambda d: as_tag(layer0(_set("digest", "sha256:../../../../x"))(d)),
        4,
        "'sha256:../../../../x' is not sha256:<64 lowercase hex>",
    ),
    "digest-absolute-path": (
        lambda d: as_tag(layer0(_set("digest", "/etc/passwd"))(d)),
        4,
        "'/etc/passwd' is not sha256",
    ),
    "unknown-algorithm": (
        lambda d: as_tag(layer0(_set("digest", "sha512:" + "ab" * 64))(d)),
        4,
        "is not sha256:<64 lowercase hex>",
    ),
    "upper-case-hex": (
        lambda d: as_tag(layer0(lambda x: x.__setitem__("digest", x["digest"].upper()))(d)),
        4,
        "is not sha256:<64 lowercase hex>",
    ),
    "config-digest-escape": (
        lambda d: as_tag({**d, "config": {**d["config"], "digest": "sha256:../config"}}),
        4,
        "config: descriptor digest",
    ),
    "negative-size": (lambda d: as_tag(layer0(_set("size", -1))(d)), 4, "size -1"),
    "media-type-with-newline": (
        lambda d: as_tag(layer0(_set("mediaType", "application/x\nX-Injected: 1"))(d)),
        4,
        "mediaType",
    ),
    "media-type-with-slashes": (
        lambda d: as_tag(layer0(_set("mediaType", "application/../../etc/passwd"))(d)),
        4,
        "mediaType",
    ),
    "manifest-type-with-newline": (
        lambda d: as_tag({**d, "mediaType": OCI_MANIFEST + "\nX: y"}, OCI_MANIFEST + "\nX: y"),
        4,
        "unsupported media type",
    ),
    "five-mib-manifest": (
        lambda d: as_tag({**d, "annotations": {"padding": "x" * (5 * 1024 * 1024)}}),
        4,
        "over the 4194304 byte limit",
    ),
    "index-whose-child-is-itself": (
        # A digest cannot name the document holding it; the reachable attack is an upstream
        # answering the child's digest with the index again. It must not hash right.
        lambda d: _self_index(),
        4,
        "hashes to",
    ),
}


def _self_index() -> dict[str, tuple[bytes, str]]:
    child = "sha256:" + "c" * 64
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_INDEX,
                "digest": child,
                "size": 300,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    body = json.dumps(index).encode()
    return {TAG: (body, OCI_INDEX), digest_of(body): (body, OCI_INDEX), child: (body, OCI_INDEX)}


def write_config(tmp_path: Path, host: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    config = project / "registrish.toml"
    config.write_text(
        f'[registry]\nroot = "public"\n\n[[image]]\nsource = "{host}/app-oci"\n'
        f'tags = ["{TAG}"]\n\n[registries."{host}"]\ninsecure = true\n'
    )
    return config


def outside(tmp_path: Path, root: Path) -> dict[str, int]:
    """What exists around ``root``: every path under the test's directory except inside
    ``root`` and its content store (name → size), and the names beside the test's directory."""
    store = Layout(root).state
    mine = {
        str(p): p.stat().st_size if p.is_file() else -1
        for p in tmp_path.rglob("*")
        if not {root, store} & {p, *p.parents}
    }
    return mine | {str(p): -2 for p in tmp_path.parent.iterdir()}


@pytest.mark.parametrize(("make", "code", "says"), LOCK_REFUSES.values(), ids=LOCK_REFUSES)
def test_lock_refuses_hostile_manifests(
    make: Callable[[dict[str, Any]], dict[str, tuple[bytes, str]]],
    code: int,
    says: str,
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve(counting_proxy, make(base_doc(seeded_upstream)))
    config = write_config(tmp_path, counting_proxy.host)
    root = config.parent / "public"
    before = outside(tmp_path, root)
    got, out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert_clean_failure(got, err, (code,))
    assert says in err, err
    assert out == ""
    assert outside(tmp_path, root) == before  # no lock, nothing anywhere
    assert not root.exists()
    # No request ever left for a path built from hostile content.
    assert all(".." not in p and "sha512" not in p for _m, p in counting_proxy.requests)


def test_lying_sizes_are_caught_by_sync(
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A descriptor that understates its blob: lock cannot know (it never downloads layers),
    sync refuses the extra bytes (exit 4) and publishes nothing for that image."""
    doc = base_doc(seeded_upstream)
    biggest = max(doc["layers"], key=lambda x: x["size"])
    biggest["size"] -= 1000
    serve(counting_proxy, as_tag(doc))
    config = write_config(tmp_path, counting_proxy.host)
    root = config.parent / "public"
    code, _out, err = run_cli("-c", str(config), "lock", capsys=capsys)
    assert code == 0, err
    before = outside(tmp_path, root)
    code, _out, err = run_cli("-c", str(config), "sync", capsys=capsys)
    assert_clean_failure(code, err, (4,))
    assert f"blob {biggest['digest']}" in err and "more than the declared" in err
    assert outside(tmp_path, root) == before
    verify_tree(root)
    assert not (root / "v2" / "app-oci" / "manifests" / TAG).exists()
    assert not list((root / "v2").rglob(f"blobs/{biggest['digest']}"))


def test_foreign_layers_with_urls_are_never_fetched(
    seeded_upstream: SeededUpstream,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Documented policy: a non-distributable layer (``urls``) is not mirrored; clients
    fetch it from its urls. registrish never requests those urls nor the blob upstream."""
    with CountingProxy(seeded_upstream.url) as elsewhere:
        doc = base_doc(seeded_upstream)
        foreign = {
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": "sha256:" + "f" * 64,
            "size": 12345,
            "urls": [f"{elsewhere.url}/layer.tar.gz", "file:///etc/passwd"],
        }
        doc["layers"].append(foreign)
        serve(counting_proxy, as_tag(doc))
        config = write_config(tmp_path, counting_proxy.host)
        root = config.parent / "public"
        for args in (("lock",), ("sync", "-v")):
            code, _out, err = run_cli("-c", str(config), *args, capsys=capsys)
            assert code == 0, err
        assert elsewhere.requests == []
    assert counting_proxy.count(path_contains="f" * 64) == 0
    assert verify_tree(root) > 3
    assert not list((root / "v2").rglob(f"blobs/{foreign['digest']}"))
    assert (root / "v2" / "app-oci" / "manifests" / TAG).exists()
