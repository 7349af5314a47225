"""The upstream registry client: the OCI distribution pull API (ping, tags, manifests,
referrers, blobs) on top of `http.RegistryHttp`, which sends every request (retries,
redirects, auth, rate limits).

Bodies stream: manifests are read up to a cap, blobs go straight to disk through a
`sink.HashingSink` and are verified before the caller sees them. Only token responses are
buffered (`auth`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx

from ..errors import IntegrityError, NotFoundError, UpstreamError
from ..fsutil import VerifiedFile
from ..oci import mediatypes
from ..oci.manifest import MAX_MANIFEST_BYTES, Descriptor, parse_manifest, sha256_digest
from ..oci.reference import (
    Reference,
    is_digest,
    is_tag,
    validate_digest,
    validate_name,
    validate_tag,
)
from .http import Endpoint, RegistryHttp, Retry, T, UnexpectedStatus
from .protocols import BlobRequest, FetchedManifest, ManifestInfo
from .sink import BlobSink, open_sink
from .transport import drain, origin, raw_chunks, read_capped

#: A tag-list page; Docker Hub's biggest repositories stay far below this.
MAX_TAGS_PAGE = 16 * 1024 * 1024
MAX_TAG_PAGES = 10_000
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;(?:[^,]*;)?\s*rel="?next"?', re.IGNORECASE)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def parse_link_next(link: str | None) -> str | None:
    """The target of ``rel="next"`` in a ``Link`` header (pagination), if any."""
    if not link:
        return None
    m = _LINK_NEXT_RE.search(link)
    return m.group(1) if m else None


class RegistryClient(RegistryHttp):
    """A thread-safe client for the distribution (OCI) pull API of upstream registries."""

    # -- public operations -------------------------------------------------------------------
    def ping(self, registry: str) -> None:
        """``GET /v2/``: reachable, speaks the registry API, and lets us in."""

        def op(ep: Endpoint) -> None:
            self._call(
                ep,
                "GET",
                ep.url("/v2/"),
                scope=None,
                what="its API (/v2/)",
                not_found=f"{ep.host} does not serve the registry API (/v2/ answered 404)",
                consume=drain,
            )

        self._with_endpoints(registry, op)

    def list_tags(self, repo: Reference) -> list[str]:
        """Every tag of `repo` (all pages), sorted; names outside the tag grammar are dropped."""
        name = validate_name(repo.repository)

        def op(ep: Endpoint) -> list[str]:
            url: httpx.URL | None = ep.url(f"/v2/{name}/tags/list")
            tags: set[str] = set()
            seen: set[str] = set()
            while url is not None:
                if str(url) in seen or len(seen) >= MAX_TAG_PAGES:
                    raise UpstreamError(
                        f"registry {ep.host} paginates the tags of {repo.repository_ref} in a loop"
                    )
                seen.add(str(url))
                body, link = self._call(
                    ep,
                    "GET",
                    url,
                    scope=_pull_scope(name),
                    what=repo.repository_ref,
                    not_found=f"repository {repo.repository_ref} not found",
                    consume=lambda r: (
                        read_capped(r, MAX_TAGS_PAGE, f"tag list of {repo.repository_ref}"),
                        r.headers.get("link"),
                    ),
                )
                tags.update(self._page_tags(body, ep, repo))
                url = self._next_page(url, parse_link_next(link), ep, repo)
            return sorted(tags)

        return self._with_endpoints(repo.registry, op)

    def head_manifest(self, repo: Reference, ref: str) -> ManifestInfo:
        """Digest, media type and size of a manifest, from ``HEAD`` (which Docker Hub does not
        count against its pull limit); ``GET`` only when the ``HEAD`` answer lacks them."""
        validate_name(repo.repository)
        kind = _validate_ref(ref)

        def op(ep: Endpoint) -> ManifestInfo | None:
            try:
                headers = self._manifest_call(ep, "HEAD", repo, ref, kind, lambda r: r.headers)
            except UnexpectedStatus as exc:
                if exc.status in (400, 405, 501):  # HEAD unsupported: GET will tell
                    return None
                raise
            digest = headers.get("docker-content-digest", "")
            media_type = mediatypes.strip_parameters(headers.get("content-type", ""))
            length = headers.get("content-length", "")
            if not is_digest(digest) or media_type not in mediatypes.MANIFEST_TYPES:
                return None
            if not length.isdigit() or int(length) > MAX_MANIFEST_BYTES:
                return None
            if kind == "manifest" and digest != ref:
                raise IntegrityError(
                    f"registry {ep.host} answered {repo.repository_ref}@{ref} with digest {digest}",
                    hint="the registry or a proxy in between serves wrong content",
                )
            return ManifestInfo(digest=digest, media_type=media_type, size=int(length))

        info = self._with_endpoints(repo.registry, op)
        if info is not None:
            return info
        fetched = self.get_manifest(repo, ref)
        return ManifestInfo(fetched.digest, fetched.media_type, len(fetched.data))

    def get_manifest(
        self, repo: Reference, ref: str, *, expected_digest: str | None = None
    ) -> FetchedManifest:
        """The manifest's exact bytes, at most 4 MiB, verified against `expected_digest`,
        against `ref` when it is a digest, and against ``Docker-Content-Digest`` if sent."""
        validate_name(repo.repository)
        kind = _validate_ref(ref)
        if expected_digest is not None:
            validate_digest(expected_digest)
        what = f"{repo.repository_ref}{'@' if kind == 'manifest' else ':'}{ref}"

        def op(ep: Endpoint) -> FetchedManifest:
            data, content_type, header_digest = self._manifest_call(
                ep,
                "GET",
                repo,
                ref,
                kind,
                lambda r: (
                    read_capped(r, MAX_MANIFEST_BYTES, f"manifest {what}", IntegrityError),
                    r.headers.get("content-type", ""),
                    r.headers.get("docker-content-digest"),
                ),
            )
            digest = sha256_digest(data)
            expected: list[tuple[str | None, str]] = [(expected_digest, "the expected digest")]
            expected.append((ref if kind == "manifest" else None, "the requested digest"))
            if header_digest and header_digest.startswith("sha256:"):
                expected.append((header_digest, "its Docker-Content-Digest header"))
            for want, source in expected:
                if want is not None and want != digest:
                    raise IntegrityError(
                        f"manifest {what} from {ep.host} hashes to {digest}, not {source} {want}",
                        hint="the registry or a proxy in between serves wrong content; "
                        "if the tag moved, run 'registrish lock --upgrade'",
                    )
            media_type = _manifest_type(content_type, data)
            if media_type not in mediatypes.MANIFEST_TYPES and not _is_json_object(data):
                # An HTML error page or a captive portal: say so instead of "not JSON".
                raise UpstreamError(
                    f"registry {ep.host} answered {what} with "
                    f"{mediatypes.strip_parameters(content_type) or 'no Content-Type'}, "
                    "not a manifest",
                    hint="is a proxy or portal in between? check the registry's address",
                )
            return FetchedManifest(data=data, media_type=media_type, digest=digest)

        return self._with_endpoints(repo.registry, op)

    def list_referrers(self, repo: Reference, digest: str) -> list[Descriptor] | None:
        """What refers to `digest`, from the OCI 1.1 referrers API (every page), or None when
        the registry has no such API (it answers 404, 400, 405 or 501): the caller then
        falls back to the tag schemas. Descriptors are validated like a manifest's."""
        name = validate_name(repo.repository)
        validate_digest(digest)
        what = f"referrers of {repo.repository_ref}@{digest}"

        def op(ep: Endpoint) -> list[Descriptor] | None:
            url: httpx.URL | None = ep.url(f"/v2/{name}/referrers/{digest}")
            found: list[Descriptor] = []
            seen: set[str] = set()
            while url is not None:
                if str(url) in seen or len(seen) >= MAX_TAG_PAGES:
                    raise UpstreamError(f"registry {ep.host} paginates the {what} in a loop")
                seen.add(str(url))
                try:
                    body, link = self._call(
                        ep,
                        "GET",
                        url,
                        scope=_pull_scope(name),
                        what=what,
                        not_found=f"registry {ep.host} has no referrers API",
                        headers={"Accept": mediatypes.OCI_INDEX},
                        consume=lambda r: (
                            read_capped(r, MAX_MANIFEST_BYTES, what),
                            r.headers.get("link"),
                        ),
                    )
                except NotFoundError:
                    if found or len(seen) > 1:
                        raise
                    return None
                except UnexpectedStatus as exc:
                    if exc.status in (400, 405, 501) and len(seen) == 1:
                        return None
                    raise
                try:
                    index = parse_manifest(body, content_type=mediatypes.OCI_INDEX)
                except IntegrityError as exc:
                    raise UpstreamError(
                        f"registry {ep.host} sent an invalid {what}: {exc.message}"
                    ) from None
                if not index.is_index:
                    raise UpstreamError(f"registry {ep.host} sent {what} that is not an index")
                found.extend(index.children)
                url = self._next_page(url, parse_link_next(link), ep, repo)
            return found

        return self._with_endpoints(repo.registry, op)

    def fetch_blob(self, blob: BlobRequest) -> VerifiedFile | None:
        """Stream a blob into `blob.dest` and verify its size and sha256; resume after bytes
        a previous run left there (``Range``). On a mismatch the destination is deleted.
        Returns what was verified (digest, size, and the stamp of the file as fsynced) so
        the caller need not hash the file again (None from a sink that is no file)."""
        repo, digest, size = blob.repo, blob.digest, blob.size
        name = validate_name(repo.repository)
        validate_digest(digest)
        if size < 0:
            raise IntegrityError(f"blob {digest} of {repo.repository_ref}: negative size {size}")
        what = f"blob {digest} of {repo.repository_ref}"

        def download(ep: Endpoint, sink: BlobSink) -> None:
            if sink.written < size:
                self._call(
                    ep,
                    "GET",
                    ep.url(f"/v2/{name}/blobs/{digest}"),
                    scope=_pull_scope(name),
                    what=repo.repository_ref,
                    not_found=f"{what} not found",
                    headers=lambda: _range_headers(sink.written),
                    consume=lambda r: _consume_blob(r, sink),
                    extra_ok=frozenset({416}),
                )

        def op(ep: Endpoint) -> VerifiedFile | None:
            sink = open_sink(blob, what, resume=True)
            try:
                resumed = sink.written > 0
                download(ep, sink)
                if sink.digest != digest and resumed:
                    # The bytes kept from an earlier run may be the wrong ones (a disk error,
                    # a killed writer): start over once before blaming the registry.
                    sink.restart()
                    download(ep, sink)
                if sink.digest != digest:
                    raise IntegrityError(
                        f"{what}: the {size} bytes received hash to {sink.digest}",
                        hint="the registry or a proxy in between serves wrong content",
                    )
                if sink.written != size:  # `_consume_blob` retries short bodies; be explicit
                    raise IntegrityError(f"{what}: received {sink.written} of {size} bytes")
                return sink.finish()
            except IntegrityError:
                sink.discard()
                raise
            finally:
                sink.close()

        return self._with_endpoints(repo.registry, op)

    def _manifest_call(
        self,
        ep: Endpoint,
        method: str,
        repo: Reference,
        ref: str,
        kind: str,
        consume: Callable[[httpx.Response], T],
    ) -> T:
        """One request for a manifest (`HEAD` or `GET`) by tag or digest, accepting every
        manifest type; `kind` is what `_validate_ref` called `ref`."""
        name = repo.repository
        return self._call(
            ep,
            method,
            ep.url(f"/v2/{name}/manifests/{ref}"),
            scope=_pull_scope(name),
            what=repo.repository_ref,
            not_found=f"{kind} {ref!r} not found in {repo.repository_ref}",
            headers={"Accept": mediatypes.ACCEPT},
            consume=consume,
        )

    # -- tag pages -----------------------------------------------------------------------------
    def _page_tags(self, body: bytes, ep: Endpoint, repo: Reference) -> list[str]:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("tags", []), (list, type(None))):
            raise UpstreamError(
                f"registry {ep.host} sent an invalid tag list for {repo.repository_ref}"
            )
        tags = []
        for tag in doc.get("tags") or ():
            if isinstance(tag, str) and is_tag(tag):
                tags.append(tag)
            else:
                self._console.debug(f"ignoring invalid tag {tag!r} of {repo.repository_ref}")
        return tags

    @staticmethod
    def _next_page(
        url: httpx.URL, link: str | None, ep: Endpoint, repo: Reference
    ) -> httpx.URL | None:
        if link is None:
            return None
        target = url.join(link)
        if origin(target) != origin(url):
            raise UpstreamError(
                f"registry {ep.host} points the tag list of {repo.repository_ref} to another host"
            )
        return target


# -- helpers ---------------------------------------------------------------------------------
def _pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def _validate_ref(ref: str) -> str:
    """'manifest' for a digest, 'tag' for a tag; raises on anything else."""
    if ref.startswith("sha256:") or ":" in ref:
        validate_digest(ref)
        return "manifest"
    validate_tag(ref)
    return "tag"


def _manifest_type(content_type: str, data: bytes) -> str:
    """The response's media type; when it is generic, the document's own ``mediaType``."""
    media_type = mediatypes.strip_parameters(content_type)
    if media_type in mediatypes.MANIFEST_TYPES:
        return media_type
    try:
        doc = json.loads(data)
    except ValueError:
        return media_type
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared in mediatypes.MANIFEST_TYPES:
        return declared
    return media_type


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def _range_headers(offset: int) -> dict[str, str]:
    # identity: hash the bytes as stored, never a re-encoding.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return headers


def _consume_blob(response: httpx.Response, sink: BlobSink) -> None:
    status = response.status_code
    if status == 416:  # our partial file is not a prefix the server agrees with
        sink.restart()
        raise Retry(UpstreamError(f"{sink.what}: range not satisfiable; restarting"))
    if status == 206:
        m = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
        if m is None or int(m.group(1)) != sink.written:
            sink.restart()
            raise Retry(UpstreamError(f"{sink.what}: the registry answered another range"))
    elif sink.written:
        sink.restart()  # 200: the server ignored Range and sends everything
    for chunk in raw_chunks(response):
        sink.write(chunk)
    if sink.written < sink.size:
        raise Retry(
            UpstreamError(
                f"{sink.what}: connection closed after {sink.written} of {sink.size} bytes"
            )
        )
