"""The manifests one `lock` run reads: each (repository, digest) fetched at most once.

Docker Hub counts every manifest GET against its pull limit, and tags such as `latest`, `3`,
`3.21` and `3.21.3` usually share a digest: fifty tags over one digest cost one GET. Before
the network, the tree is asked: the typed twin `v2/<name>/manifests/sha256:<hex>.~<kind>`
that `sync` wrote holds the exact bytes and names their type; they are hashed and used only
when they match the digest. Thread-safe: concurrent askers of one digest wait for one fetch.
"""

from __future__ import annotations

import threading

from ..errors import IntegrityError
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest, sha256_digest
from ..oci.reference import Reference
from ..tree.layout import Layout
from .protocols import ManifestSource

_Key = tuple[str, str]  # (repository reference, digest)


class ManifestCache:
    def __init__(self, upstream: ManifestSource, tree: Layout | None = None) -> None:
        self._upstream = upstream
        self._tree = tree
        self._manifests: dict[_Key, Manifest] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[_Key, threading.Lock] = {}
        #: Manifests fetched from upstream, and found in the tree (for tests and -v).
        self.fetched = 0
        self.from_tree = 0

    def local(self, repo: Reference, digest: str, name: str) -> Manifest | None:
        """The manifest if this run or the tree (repository `name`) already has it."""
        key = (repo.repository_ref, digest)
        with self._lock:
            known = self._manifests.get(key)
        if known is not None or self._tree is None:
            return known
        found = _read_twin(self._tree, name, digest)
        if found is not None:
            with self._lock:
                self._manifests.setdefault(key, found)
                self.from_tree += 1
        return found

    def get(self, repo: Reference, digest: str, name: str) -> Manifest:
        """The manifest `digest` of `repo` (verified), fetched only if nobody has it yet."""
        key = (repo.repository_ref, digest)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            found = self.local(repo, digest, name)
            if found is not None:
                return found
            fetched = self._upstream.get_manifest(repo, digest, expected_digest=digest)
            manifest = parse_manifest(
                fetched.data, content_type=fetched.media_type, expected_digest=digest
            )
            with self._lock:
                self._manifests[key] = manifest
                self.fetched += 1
            return manifest


def _read_twin(tree: Layout, name: str, digest: str) -> Manifest | None:
    for media_type in mediatypes.TYPE_OF_KIND.values():
        path = tree.path(Layout.rel_manifest_twin(name, digest, media_type))
        try:
            with path.open("rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError:  # absent (the usual case), or unreadable: upstream will tell
            continue
        if sha256_digest(data) != digest:
            return None  # damaged: fetched again, and the next sync repairs the tree
        try:
            return parse_manifest(data, content_type=media_type, expected_digest=digest)
        except IntegrityError:
            return None
    return None
