"""The manifests one `lock` run reads: each (repository, digest) fetched at most once.

Docker Hub counts every manifest GET against its pull limit, and tags such as `latest`, `3`,
`3.21` and `3.21.3` usually share a digest: fifty tags over one digest cost one GET. Before
the network, the tree is asked: the typed twin `v2/<name>/manifests/sha256:<hex>.~<kind>`
that `sync` wrote holds the exact bytes and names their type; they are hashed and used only
when they match the digest. Thread-safe: concurrent askers of one digest wait for one fetch.

Bounded: holding every parsed manifest of a run cost 530 MiB at 100,000 tags. The run says
up front which top-level digests its tags will ask for (`expect`, once per tag) and when
a tag is done with its digest (`release`): a manifest is held while a tag still expects
it, so a digest shared by many tags is fetched once however far apart they are. Anything
else (an index's children) stays among the last `RECENT` manifests read: a child shared
by two indexes is fetched once as long as fewer than that many manifests were read
between them (tags are resolved in order, so related indexes come close together).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..errors import IntegrityError
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest, sha256_digest
from ..oci.reference import Reference
from ..tree.layout import Layout
from .protocols import ManifestSource

_Key = tuple[str, str]  # (repository reference, digest)
#: Manifests held beyond those a pending tag expects.
RECENT = 4096


class ManifestCache:
    def __init__(
        self, upstream: ManifestSource, tree: Layout | None = None, *, recent: int | None = None
    ) -> None:
        self._upstream = upstream
        self._tree = tree
        self._recent_cap = RECENT if recent is None else recent
        #: Per repository, per digest: how many tags still expect it (nested, not keyed by
        #: a tuple: 100,000 entries when every tag has its own digest).
        self._expected: dict[str, dict[str, int]] = {}
        self._pinned: dict[_Key, Manifest] = {}  # read, and still expected
        self._recent: OrderedDict[_Key, Manifest] = OrderedDict()
        self._lock = threading.Lock()
        self._reading: dict[_Key, threading.Event] = {}  # keys being read or fetched now
        self._names: dict[str, bool] = {}  # repository name -> the tree has its manifests
        #: Manifests fetched from upstream, and found in the tree (for tests and -v).
        self.fetched = 0
        self.from_tree = 0

    def expect(self, repo: Reference, digest: str) -> None:
        """One more tag will ask for `digest` of `repo` (and `release` it when done)."""
        with self._lock:
            counts = self._expected.setdefault(repo.repository_ref, {})
            counts[digest] = counts.get(digest, 0) + 1

    def release(self, repo: Reference, digest: str) -> None:
        """A tag that `expect`ed `digest` is done with it."""
        key = (repo.repository_ref, digest)
        with self._lock:
            counts = self._expected.get(key[0], {})
            left = counts.get(digest, 0) - 1
            if left > 0:
                counts[digest] = left
            elif left == 0:
                del counts[digest]
                manifest = self._pinned.pop(key, None)
                if manifest is not None:
                    self._keep_recent(key, manifest)

    @property
    def held(self) -> int:
        """How many manifests the cache holds now."""
        with self._lock:
            return len(self._recent) + len(self._pinned)

    def _held(self, key: _Key) -> Manifest | None:
        """Under `_lock`: the manifest if this run holds it."""
        pinned = self._pinned.get(key)
        if pinned is not None:
            return pinned
        found = self._recent.get(key)
        if found is not None:
            self._recent.move_to_end(key)
        return found

    def _store(self, key: _Key, manifest: Manifest) -> None:
        """Under `_lock`."""
        if key[1] in self._expected.get(key[0], {}):
            self._pinned[key] = manifest
        else:
            self._keep_recent(key, manifest)

    def _keep_recent(self, key: _Key, manifest: Manifest) -> None:
        self._recent[key] = manifest
        self._recent.move_to_end(key)
        while len(self._recent) > self._recent_cap:
            self._recent.popitem(last=False)

    def local(
        self, repo: Reference, digest: str, name: str, *, keep: bool = True
    ) -> Manifest | None:
        """The manifest if this run or the tree (repository `name`) already has it; read
        from the tree, it is held only with `keep` (else only checked)."""
        key = (repo.repository_ref, digest)
        with self._lock:
            known = self._held(key)
        if known is not None or self._tree is None:
            return known
        found = _read_twin(self._tree, name, digest) if self._in_tree(name) else None
        if found is not None and keep:
            with self._lock:
                self._store(key, found)
                self.from_tree += 1
        return found

    def _in_tree(self, name: str) -> bool:
        """Whether the tree has a manifests directory for `name` (asked once per name: a
        lock before the first sync looked for four twins of every tag)."""
        known = self._names.get(name)
        if known is None:
            assert self._tree is not None
            twin = Layout.rel_manifest_twin(name, "sha256:" + "0" * 64, mediatypes.OCI_MANIFEST)
            known = self._names[name] = self._tree.path(twin).parent.is_dir()
        return known

    def get(self, repo: Reference, digest: str, name: str) -> Manifest:
        """The manifest `digest` of `repo` (verified), fetched only if nobody has it yet."""
        key = (repo.repository_ref, digest)
        while True:
            with self._lock:
                found = self._held(key)
                if found is not None:
                    return found
                reading = self._reading.get(key)
                mine = reading is None
                if reading is None:
                    reading = self._reading[key] = threading.Event()
            if mine:
                break
            reading.wait()  # then held (or its reader failed: this asker tries itself)
        try:
            manifest = self.local(repo, digest, name)
            if manifest is None:
                fetched = self._upstream.get_manifest(repo, digest, expected_digest=digest)
                manifest = parse_manifest(
                    fetched.data, content_type=fetched.media_type, expected_digest=digest
                )
                with self._lock:
                    self._store(key, manifest)
                    self.fetched += 1
            return manifest
        finally:
            with self._lock:
                del self._reading[key]
            reading.set()


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
