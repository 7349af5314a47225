"""A small, complete registry tree built in Python (no network, no sync), shared by the
route/host/serve/check tests (its own tests: test_hosts_tree.py), and `verify_tree`, which
checks any tree's files against their names.

`build_tree` writes all four manifest kinds (OCI manifest, Docker v2s2, OCI index and
Docker list over linux/amd64 + linux/arm64), a nested name, several tags, a real
referrer with an artifactType, and valid gzipped tar layers whose config `diff_ids`
match, so docker/podman/skopeo/containerd can really pull from it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from registrish_lock.lock.lockfile import Lock, LockedManifest, LockedTag, make_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.routes import EMPTY_REFERRERS, EMPTY_REFERRERS_REL
from registrish_lock.tree.layout import Layout, split_twin
from registrish_lock.tree.state import hash_file

SIGNATURE_TYPE = "application/vnd.example.signature.v1"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BuiltTree:
    layout: Layout
    lock: Lock
    #: "name:tag" -> (digest, media type)
    refs: dict[str, tuple[str, str]]
    #: a blob digest that exists (for Range tests) and its bytes
    blob: tuple[str, str, bytes]
    #: the digest of app-oci:v1, which has one referrer of SIGNATURE_TYPE
    signed: str


class _Writer:
    def __init__(self, root: Path) -> None:
        self.layout = Layout(root)
        self.names: dict[str, set[str]] = {}

    def blob(self, name: str, data: bytes) -> dict[str, object]:
        digest = sha(data)
        store = self.layout.store_blob(digest)
        store.parent.mkdir(parents=True, exist_ok=True)
        if not store.exists():
            store.write_bytes(data)
        target = self.layout.path(Layout.rel_blob(name, digest))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(store, target)
        return {"digest": digest, "size": len(data)}

    def manifest(self, name: str, data: bytes, media_type: str, tags: tuple[str, ...] = ()) -> str:
        digest = sha(data)
        for ref in (digest, *tags):
            exact = self.layout.path(Layout.rel_manifest(name, ref))
            exact.parent.mkdir(parents=True, exist_ok=True)
            exact.write_bytes(data)
            twin = self.layout.path(Layout.rel_manifest_twin(name, ref, media_type))
            if twin.exists():
                twin.unlink()
            os.link(exact, twin)
        self.names.setdefault(name, set()).update(tags)
        referrers = self.layout.path(Layout.rel_referrers(name, digest))
        referrers.parent.mkdir(parents=True, exist_ok=True)
        if not referrers.exists():
            referrers.write_bytes(EMPTY_REFERRERS)
        return digest


def _layer(text: str) -> tuple[bytes, str]:
    """A gzipped tar with one file; returns (stored bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), sha(plain)


def _image(w: _Writer, name: str, arch: str, docker: bool, text: str) -> tuple[bytes, str]:
    layer, diff_id = _layer(text)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    media_type = mediatypes.DOCKER_MANIFEST if docker else mediatypes.OCI_MANIFEST
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, **w.blob(name, config)},
        "layers": [{"mediaType": DOCKER_LAYER if docker else OCI_LAYER, **w.blob(name, layer)}],
    }
    return json.dumps(doc, indent=2).encode(), media_type


def build_served_tree(root: Path) -> BuiltTree:
    """`build_tree` plus the empty referrers index that `sync` writes with the host configs
    (every host falls back to it): a tree ready for a web server."""
    built = build_tree(root)
    built.layout.path(EMPTY_REFERRERS_REL).write_bytes(EMPTY_REFERRERS)
    return built


def build_tree(root: Path) -> BuiltTree:
    """Write the tree under `root` and return its lock."""
    w = _Writer(root)
    tags: list[LockedTag] = []
    refs: dict[str, tuple[str, str]] = {}

    def lock_tag(
        name: str, tag: str, digest: str, mt: str, size: int, plats: tuple[LockedManifest, ...] = ()
    ) -> None:
        tags.append(LockedTag(name, tag, f"127.0.0.1:5000/{name}", digest, mt, size, size, plats))
        refs[f"{name}:{tag}"] = (digest, mt)

    for name, docker in (("app-oci", False), ("app-docker", True), ("team/tools/app", False)):
        data, mt = _image(w, name, "amd64", docker, f"hello from {name}\n")
        repo_tags = ("v1", "latest", "v2") if name == "app-oci" else ("v1",)
        digest = w.manifest(name, data, mt, repo_tags)
        for tag in repo_tags:
            lock_tag(name, tag, digest, mt, len(data))

    for name, docker in (("multi", False), ("multi-docker", True)):
        children = []
        plats = []
        for arch in ("amd64", "arm64"):
            data, mt = _image(w, name, arch, docker, f"{name} on {arch}\n")
            digest = w.manifest(name, data, mt)
            children.append(
                {
                    "mediaType": mt,
                    "digest": digest,
                    "size": len(data),
                    "platform": {"os": "linux", "architecture": arch},
                }
            )
            plats.append(LockedManifest(f"linux/{arch}", digest, mt, len(data)))
        index_type = mediatypes.DOCKER_LIST if docker else mediatypes.OCI_INDEX
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": index_type, "manifests": children}, indent=2
        ).encode()
        digest = w.manifest(name, index, index_type, ("v1",))
        lock_tag(name, "v1", digest, index_type, len(index), tuple(sorted(plats)))

    # A signature-like referrer of app-oci:v1 (not locked: referrers come and go).
    signed = refs["app-oci:v1"][0]
    signed_size = w.layout.path(Layout.rel_manifest("app-oci", signed)).stat().st_size
    empty = w.blob("app-oci", b"{}")
    payload = w.blob("app-oci", b"signature bytes")
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "artifactType": SIGNATURE_TYPE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
            "layers": [{"mediaType": SIGNATURE_TYPE, **payload}],
            "subject": {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": signed,
                "size": signed_size,
            },
        }
    ).encode()
    artifact_digest = w.manifest("app-oci", artifact, mediatypes.OCI_MANIFEST)
    referrers = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": artifact_digest,
                "size": len(artifact),
                "artifactType": SIGNATURE_TYPE,
            }
        ],
    }
    w.layout.path(Layout.rel_referrers("app-oci", signed)).write_bytes(
        json.dumps(referrers).encode()
    )

    for repo, listed in w.names.items():
        path = w.layout.path(Layout.rel_tags_list(repo))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps({"name": repo, "tags": sorted(listed)}).encode())
    w.layout.path(Layout.rel_catalog()).write_bytes(
        json.dumps({"repositories": sorted(w.names)}).encode()
    )
    w.layout.path(Layout.rel_ping()).write_bytes(b"{}")
    w.layout.path(EMPTY_REFERRERS_REL).write_bytes(EMPTY_REFERRERS)
    (w.layout.tmp).mkdir(parents=True, exist_ok=True)
    # a hidden directory in the root: no host may serve it
    (root / ".private").mkdir(exist_ok=True)
    (root / ".private" / "secret").write_text("must never be served")

    blob_layer, _ = _layer("hello from app-oci\n")
    return BuiltTree(
        layout=w.layout,
        lock=make_lock("sha256:" + "0" * 64, tags),
        refs=refs,
        blob=("app-oci", sha(blob_layer), blob_layer),
        signed=signed,
    )


def verify_tree(root: Path) -> int:
    """Hash every blob and manifest under v2/ and the store against its name; twins
    must be the same bytes as their exact file. Returns the number of files checked."""
    checked = 0
    for path in sorted((root / "v2").rglob("*")):
        if not path.is_file():
            continue
        section, name = path.parent.name, path.name
        if section == "blobs" or (section == "manifests" and name.startswith("sha256:")):
            expected = name.split(".~")[0]
            assert hash_file(path)[0] == expected, path
            checked += 1
        if section == "manifests" and split_twin(name) is not None:
            exact = path.parent / split_twin(name)[0]  # type: ignore[index]
            assert exact.read_bytes() == path.read_bytes(), path
            doc = json.loads(path.read_bytes())
            assert doc.get("mediaType", mediatypes.OCI_MANIFEST) == split_twin(name)[1]  # type: ignore[index]
    store = Layout(root).state / "blobs" / "sha256"
    for path in store.iterdir() if store.is_dir() else []:
        assert hash_file(path)[0] == f"sha256:{path.name}", path
        checked += 1
    return checked
