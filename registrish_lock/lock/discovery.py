"""Finding referrers upstream (the I/O half of `referrers`), for `registrish lock`.

For each subject digest: the OCI 1.1 referrers API, or — when the registry has none —
the OCI referrers tag schema (`sha256-<hex>`, an index the pusher maintains); then
cosign's `sha256-<hex>.sig/.att/.sbom` tags, always, since cosign writes those by default
even to registries with the API. Each artifact manifest is fetched by digest, verified,
and kept only if its `subject` really names the digest (the listing is not trusted).
Results are memoised per (repository, digest): tags sharing a digest share referrers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..console import Console
from ..errors import IntegrityError, NotFoundError
from ..oci import mediatypes
from ..oci.manifest import Descriptor, Manifest, parse_manifest
from ..oci.reference import Reference
from ..oci.referrers import MAX_DEPTH, artifact_type_of, cosign_tags, refers_to, schema_tag
from ..upstream.protocols import FetchedManifest, ManifestInfo
from .lockfile import LockedReferrer


@runtime_checkable
class ReferrersUpstream(Protocol):
    """What discovery needs: `registry.RegistryClient` has it all."""

    def list_referrers(self, repo: Reference, digest: str) -> list[Descriptor] | None: ...
    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo: ...
    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest: ...


@dataclass(frozen=True)
class Found:
    """One referrer: its lock entry and the parsed (verified) manifest."""

    locked: LockedReferrer
    manifest: Manifest


class ReferrerFinder:
    """Thread-safe; share one per `registrish lock` run."""

    def __init__(self, upstream: ReferrersUpstream, console: Console | None = None) -> None:
        self.upstream = upstream
        self.console = console
        self._cache: dict[tuple[str, str], tuple[Found, ...]] = {}
        self._lock = threading.Lock()

    def find(self, repo: Reference, roots: Iterable[str]) -> list[Found]:
        """Referrers of `roots` and, up to `MAX_DEPTH`, referrers of those; sorted."""
        result: dict[tuple[str, str, str], Found] = {}
        frontier = list(dict.fromkeys(roots))
        visited = set(frontier)
        for _depth in range(MAX_DEPTH):
            following: list[str] = []
            for subject in frontier:
                for found in self._direct(repo, subject):
                    r = found.locked
                    result.setdefault((r.subject, r.digest, r.tag), found)
                    if r.digest not in visited:
                        visited.add(r.digest)
                        following.append(r.digest)
            frontier = following
        return [result[key] for key in sorted(result)]

    # --- one subject ------------------------------------------------------------------------
    def _direct(self, repo: Reference, subject: str) -> tuple[Found, ...]:
        key = (repo.repository_ref, subject)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = self._discover(repo, subject)
        with self._lock:
            return self._cache.setdefault(key, found)

    def _discover(self, repo: Reference, subject: str) -> tuple[Found, ...]:
        where = f"{repo.repository_ref}@{subject}"
        listed = self.upstream.list_referrers(repo, subject)
        if listed is None:
            self._debug(f"{repo.registry} has no referrers API; trying the tag schemas")
            listed = self._schema_index(repo, subject)
        found: list[Found] = []
        for descriptor in listed:
            if descriptor.media_type not in mediatypes.MANIFEST_TYPES:
                self._debug(f"skipping referrer {descriptor.digest} of {where}: not a manifest")
                continue
            manifest = self._fetch(repo, descriptor.digest, where)
            if manifest is None:
                continue
            if not refers_to(manifest, subject):
                self._warn(f"{where}: listed referrer {manifest.digest} has another subject")
                continue
            found.append(Found(_locked(subject, manifest, ""), manifest))
        for tag in cosign_tags(subject):
            try:
                digest = self.upstream.head_manifest(repo, tag).digest
            except NotFoundError:
                continue
            manifest = self._fetch(repo, digest, where)
            if manifest is not None:
                found.append(Found(_locked(subject, manifest, tag), manifest))
        return tuple(found)

    def _schema_index(self, repo: Reference, subject: str) -> list[Descriptor]:
        """The OCI referrers tag schema: an index tagged `sha256-<hex>`, if pushed."""
        try:
            fetched = self.upstream.get_manifest(repo, schema_tag(subject))
        except NotFoundError:
            return []
        try:
            index = parse_manifest(fetched.data, content_type=fetched.media_type)
        except IntegrityError as exc:
            self._warn(f"{repo.repository_ref}:{schema_tag(subject)}: {exc.message}; ignored")
            return []
        return list(index.children) if index.is_index else []

    def _fetch(self, repo: Reference, digest: str, where: str) -> Manifest | None:
        try:
            fetched = self.upstream.get_manifest(repo, digest, expected_digest=digest)
        except NotFoundError:
            self._warn(f"{where}: referrer {digest} is listed but missing upstream; skipped")
            return None
        if fetched.media_type not in mediatypes.MANIFEST_TYPES:
            self._warn(f"{where}: referrer {digest} is a {fetched.media_type}; not mirrored")
            return None
        try:
            return parse_manifest(
                fetched.data, content_type=fetched.media_type, expected_digest=digest
            )
        except IntegrityError as exc:
            raise IntegrityError(f"referrer of {where}: {exc.message}", hint=exc.hint) from None

    def _debug(self, text: str) -> None:
        if self.console is not None:
            self.console.debug(text)

    def _warn(self, text: str) -> None:
        if self.console is not None:
            self.console.warn(text)


def _locked(subject: str, manifest: Manifest, tag: str) -> LockedReferrer:
    return LockedReferrer(
        subject=subject,
        digest=manifest.digest,
        media_type=manifest.media_type,
        size=manifest.size,
        artifact_type=artifact_type_of(manifest),
        tag=tag,
    )
