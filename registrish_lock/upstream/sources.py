"""Every kind of source behind one upstream protocol (`list_tags`, `head_manifest`,
`get_manifest`, `fetch_blob`), as `registry.RegistryClient` implements it for registries:
`SourceRouter` dispatches on `Reference.registry` to the local sources for air-gapped work
(`oci:PATH` in `oci_layout`, `docker-archive:FILE` in `docker_archive`); the registry
client is created only when a registry source is asked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..console import Console
from ..fsutil import VerifiedFile
from ..lock.config import Config
from ..lock.discovery import ReferrersUpstream
from ..oci.manifest import Descriptor
from ..oci.reference import DOCKER_ARCHIVE, OCI_LAYOUT, Reference
from .docker_archive import DockerArchiveSource
from .oci_layout import OciLayoutSource
from .protocols import (
    DEFAULT_JOBS,
    BlobRequest,
    Closing,
    FetchedManifest,
    LazyClient,
    ManifestBudget,
    ManifestInfo,
    Upstream,
)


class SourceRouter(Closing):
    """The upstream protocol over registries and local sources alike: each call goes to the
    source `repo.registry` names. The registry client is made on first use, so a config of
    local sources only never creates one."""

    def __init__(self, *, base: Path, registry: Callable[[], Upstream]) -> None:
        self._registry = LazyClient(registry)
        self._oci = OciLayoutSource(base)
        self._archives = DockerArchiveSource(base)

    def _pick(self, repo: Reference) -> Upstream:
        return self._source(repo.registry)

    def _source(self, registry: str) -> Upstream:
        if registry == OCI_LAYOUT:
            return self._oci
        if registry == DOCKER_ARCHIVE:
            return self._archives
        return self._registry.get()

    @property
    def request_count(self) -> int:
        return self._registry.request_count + self._oci.request_count + self._archives.request_count

    def list_tags(self, repo: Reference) -> list[str]:
        return self._pick(repo).list_tags(repo)

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        return self._pick(repo).head_manifest(repo, ref)

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        return self._pick(repo).get_manifest(repo, ref, expected_digest=expected_digest)

    def fetch_blob(self, blob: BlobRequest) -> VerifiedFile | None:
        return self._pick(blob.repo).fetch_blob(blob)

    def list_referrers(self, repo: Reference, digest: str) -> list[Descriptor] | None:
        """The registry's OCI referrers API; None (no API) for local sources, where the
        tag schemas (`sha256-<hex>`, `.sig` …) still work: they are plain tags."""
        source = self._pick(repo)
        if isinstance(source, ReferrersUpstream):
            return source.list_referrers(repo, digest)
        return None

    def plan_manifest_gets(self, registry: str, gets: int) -> None:
        """Local sources have no rate limit; a registry client may warn about its own."""
        source = self._source(registry)
        if isinstance(source, ManifestBudget):
            source.plan_manifest_gets(registry, gets)

    def close(self) -> None:
        self._registry.close()


def open_sources(config: Config, console: Console, *, jobs: int = DEFAULT_JOBS) -> SourceRouter:
    """The upstream for `config`'s images: each request goes to the image's source, a
    registry client being created (and httpx imported) only when a registry is used."""

    def registry_client() -> Upstream:
        from .registry import RegistryClient

        return RegistryClient(
            settings=config.registry_settings, console=console, max_connections_per_registry=jobs
        )

    return SourceRouter(base=config.path.parent, registry=registry_client)
