"""An in-memory upstream for resolver unit tests: manifests by digest, tags, counts.
(End-to-end tests use the real docker-registry from tests/testbed.)"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from registrish_lock.errors import NotFoundError
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import sha256_digest
from registrish_lock.oci.reference import Reference
from registrish_lock.upstream.protocols import FetchedManifest, ManifestInfo


def blob_digest(label: str) -> str:
    return sha256_digest(label.encode())


def image_manifest(label: str, layer_sizes: tuple[int, ...] = (100, 200)) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob_digest(f"{label}-config"),
            "size": 10,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": blob_digest(f"{label}-layer{i}"),
                "size": size,
            }
            for i, size in enumerate(layer_sizes)
        ],
    }
    return json.dumps(doc).encode()


def index_manifest(children: dict[str, bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": sha256_digest(data),
                "size": len(data),
                "platform": {"os": plat.split("/")[0], "architecture": plat.split("/")[1]},
            }
            for plat, data in sorted(children.items())
        ],
    }
    return json.dumps(doc).encode()


@dataclass
class MemoryUpstream:
    manifests: dict[str, bytes] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    #: digest → the Content-Type answered, where it is not the document's `mediaType`
    content_types: dict[str, str] = field(default_factory=dict)

    @property
    def request_count(self) -> int:
        return sum(self.calls.values())

    def put(self, repo: str, tag: str, data: bytes, content_type: str = "") -> str:
        digest = sha256_digest(data)
        self.manifests[digest] = data
        self.tags[(repo, tag)] = digest
        if content_type:
            self.content_types[digest] = content_type
        return digest

    def _type(self, digest: str) -> str:
        declared = json.loads(self.manifests[digest]).get("mediaType", "application/json")
        return self.content_types.get(digest, str(declared))

    def put_index(self, repo: str, tag: str, platforms: dict[str, str]) -> str:
        children = {plat: image_manifest(label) for plat, label in platforms.items()}
        for data in children.values():
            self.manifests[sha256_digest(data)] = data
        return self.put(repo, tag, index_manifest(children))

    def list_tags(self, repo: Reference) -> list[str]:
        self.calls["list"] += 1
        return sorted(t for (r, t) in self.tags if r == repo.repository)

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        self.calls["head"] += 1
        digest = self.tags.get((repo.repository, ref))
        if digest is None:
            raise NotFoundError(f"tag {ref!r} not found in {repo}")
        return ManifestInfo(digest, self._type(digest), len(self.manifests[digest]))

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        self.calls["get"] += 1
        digest = ref if ref.startswith("sha256:") else self.tags[(repo.repository, ref)]
        return FetchedManifest(self.manifests[digest], self._type(digest), digest)
