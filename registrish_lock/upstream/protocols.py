"""What the resolver and sync need from an upstream: one set of protocols, satisfied by
`registry.RegistryClient`, by the local sources (`oci_layout`, `docker_archive`), and by
`sources.SourceRouter` which dispatches between them. Kept free of httpx so local-only runs never import it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, TypeVar, runtime_checkable

from ..fsutil import VerifiedFile
from ..oci.reference import Reference

# BlobRequest lives beside the sinks its `dest` makes; it is part of this protocol.
from .sink import BlobRequest as BlobRequest

_C = TypeVar("_C", bound="Closing")
_U = TypeVar("_U", bound="BlobSource", covariant=True)

#: Requests in flight per upstream registry (`--jobs`), for `lock`, `outdated` and `sync`.
DEFAULT_JOBS = 8


@dataclass(frozen=True)
class ManifestInfo:
    """What `HEAD` (or a `GET` fallback) tells about a manifest."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    #: The verified sha256 of `data`.
    digest: str


class ManifestSource(Protocol):
    """What resolution (`lock`, `outdated`) needs."""

    def list_tags(self, repo: Reference) -> list[str]: ...
    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo: ...
    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest: ...


class BlobSource(Protocol):
    """What `sync` needs."""

    @property
    def request_count(self) -> int: ...
    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest: ...
    # Returns None when the caller must hash `blob.dest` itself.
    def fetch_blob(self, blob: BlobRequest) -> VerifiedFile | None: ...
    def close(self) -> None: ...


class Upstream(ManifestSource, BlobSource, Protocol):
    """Everything: a registry client or a local source."""


class LazyClient(Generic[_U]):
    """Creates the client on first use (thread-safe), so a run that needs no upstream never
    opens one; counts requests and closes only if created."""

    def __init__(self, factory: Callable[[], _U]) -> None:
        self._factory = factory
        self._client: _U | None = None
        self._lock = threading.Lock()

    def get(self) -> _U:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    @property
    def request_count(self) -> int:
        return self._client.request_count if self._client is not None else 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@runtime_checkable
class ManifestBudget(Protocol):
    """An upstream that can warn when a run plans more manifest GETs than its rate limit
    leaves (the registry client; local sources have no limit)."""

    def plan_manifest_gets(self, registry: str, gets: int) -> None: ...


class Closing:
    """A `with` block that calls `close()` at its end, for upstreams that hold connections."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
