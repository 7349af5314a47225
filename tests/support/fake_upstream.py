"""A fake upstream for sync/gc unit tests (real-component tests: test_sync_e2e.py; the
fake's own test: test_sync_fake.py), and builders for images of all four manifest kinds.
The fake implements the methods sync uses from registry.RegistryClient, streams blobs with
resume, and can corrupt or cut a download; it does NOT verify, so tests see what sync
itself guarantees."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from registrish_lock.errors import NotFoundError
from registrish_lock.lock.lockfile import Lock, LockedManifest, LockedTag, make_lock
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import sha256_digest
from registrish_lock.oci.reference import Reference
from registrish_lock.upstream.protocols import BlobRequest, FetchedManifest

HOST = "127.0.0.1:5999"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Interrupted(Exception):
    """The fake's stand-in for a connection dropped mid-download."""


@dataclass
class FakeUpstream:
    manifests: dict[str, bytes] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: digest → bytes served instead of the real ones
    corrupt: dict[str, bytes] = field(default_factory=dict)
    #: digest → stop (raise Interrupted) after this many bytes of the whole blob
    cut_at: dict[str, int] = field(default_factory=dict)
    #: (digest, offset) of every blob request: offset > 0 is a resumed (Range) request
    ranges: list[tuple[str, int]] = field(default_factory=list)
    closed: bool = False

    @property
    def request_count(self) -> int:
        return len(self.requests)

    # --- builders -----------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def put_manifest(self, repo: str, tag: str | None, data: bytes) -> str:
        digest = sha256_digest(data)
        self.manifests[digest] = data
        if tag is not None:
            self.tags[(repo, tag)] = digest
        return digest

    # --- the client API ------------------------------------------------------------------
    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        self.requests.append(("GET", f"{repo.repository}/manifests/{ref}"))
        digest = ref if ref.startswith("sha256:") else self.tags[(repo.repository, ref)]
        if digest not in self.manifests:
            raise NotFoundError(f"manifest {ref} not found in {repo}")
        data = self.manifests[digest]
        assert expected_digest in (None, digest)
        return FetchedManifest(data, json.loads(data)["mediaType"], digest)

    def fetch_blob(self, blob: BlobRequest) -> None:
        digest, dest, on_bytes = blob.digest, blob.dest, blob.on_bytes
        assert isinstance(dest, Path), "this double writes local files only"
        self.requests.append(("GET", f"{blob.repo.repository}/blobs/{digest}"))
        data = self.corrupt.get(digest, self.blobs[digest])
        assert blob.size == len(self.blobs[digest]), "sync asked with the wrong size"
        offset = dest.stat().st_size if dest.exists() else 0
        self.ranges.append((digest, offset))
        if offset and on_bytes is not None:
            on_bytes(offset)  # like RegistryClient: kept bytes are reported up front
        stop = self.cut_at.pop(digest, None)
        with dest.open("ab") as handle:
            end = len(data) if stop is None else stop
            for start in range(offset, end, 4096):
                chunk = data[start : min(start + 4096, end)]
                handle.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        if stop is not None:
            raise Interrupted(f"cut {digest} at {stop}")

    def close(self) -> None:
        self.closed = True


# --- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    digest: str
    media_type: str
    data: bytes
    blobs: tuple[str, ...] = ()
    children: tuple[Built, ...] = ()
    platform: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


def build_image(
    up: FakeUpstream,
    repo: str,
    tag: str | None,
    *,
    docker: bool = False,
    seed: str = "a",
    layer_sizes: tuple[int, ...] = (3000, 70000),
    platform: str = "linux/amd64",
    extra_layers: tuple[dict[str, object], ...] = (),
) -> Built:
    """An image manifest with a config and random-ish layers (content from `seed`)."""
    os_, arch = platform.split("/")[:2]
    config = json.dumps({"architecture": arch, "os": os_, "seed": seed}).encode()
    config_digest = up.put_blob(config)
    layers = []
    for i, size in enumerate(layer_sizes):
        data = (hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32 + 1))[:size]
        layers.append((up.put_blob(data), len(data)))
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST if docker else mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json"
            if docker
            else "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": d, "size": s}
            for d, s in layers
        ]
        + list(extra_layers),
    }
    data = json.dumps(doc, indent=3).encode()
    digest = up.put_manifest(repo, tag, data)
    return Built(
        digest,
        str(doc["mediaType"]),
        data,
        blobs=(config_digest, *(d for d, _ in layers)),
        platform=platform,
    )


def build_index(
    up: FakeUpstream,
    repo: str,
    tag: str | None,
    children: list[Built],
    *,
    docker: bool = False,
    platform: str | None = None,
) -> Built:
    def platform_doc(p: str | None) -> dict[str, str]:
        parts = (p or "linux/amd64").split("/")
        return {"os": parts[0], "architecture": parts[1]}

    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_LIST if docker else mediatypes.OCI_INDEX,
        "manifests": [
            {
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.size,
                "platform": platform_doc(c.platform),
            }
            for c in children
        ],
    }
    data = json.dumps(doc, indent=2).encode()
    digest = up.put_manifest(repo, tag, data)
    return Built(digest, str(doc["mediaType"]), data, children=tuple(children), platform=platform)


def locked(
    name: str,
    tag: str,
    built: Built,
    *,
    source: str | None = None,
    platforms: list[str] | None = None,
) -> LockedTag:
    """A lock entry; for an index, `platforms` selects children (default: all)."""
    selected = [
        LockedManifest(c.platform or "linux/amd64", c.digest, c.media_type, c.size)
        for c in built.children
        if platforms is None or c.platform in platforms
    ]
    return LockedTag(
        name=name,
        tag=tag,
        source=source or f"{HOST}/{name}",
        digest=built.digest,
        media_type=built.media_type,
        size=built.size,
        total_size=built.size,
        platforms=tuple(sorted(selected)),
    )


def lock_of(*tags: LockedTag, config_hash: str = "sha256:" + "0" * 64) -> Lock:
    return make_lock(config_hash, tags)


def all_blobs(built: Built) -> set[str]:
    result = set(built.blobs)
    for child in built.children:
        result |= all_blobs(child)
    return result
