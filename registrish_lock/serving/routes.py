"""The route table: for every path of the tree, what a correct host answers.

This is the single source of truth that `serve` implements, the host renderers
(`hosts/`) translate into nginx/Caddy/Apache/`_headers`/S3 metadata, and `check`
verifies on a deployment. Everything here is pure except `read_objects`, which reads
the locked manifests from the tree to learn their blobs and referrers documents.

Paths are `/`-separated and relative to the tree root (a URL path minus its leading
`/`), like `layout.Layout.rel_*`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from ..lock.lockfile import Lock, LockedTag
from ..oci import mediatypes

# The documents, defined with the OCI vocabulary (sync writes them too), re-exported here.
from ..oci.documents import EMPTY_REFERRERS as EMPTY_REFERRERS
from ..oci.documents import PING_DOCUMENT as PING_DOCUMENT
from ..oci.manifest import parse_manifest
from ..oci.reference import is_digest, is_name, is_tag
from ..tree.layout import TWIN_SEPARATOR, Layout

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d+)", re.IGNORECASE)
#: The only methods a host answers (read-only); any other gets 405 with this `Allow`.
ALLOWED_METHODS = ("GET", "HEAD")
ALLOW = ", ".join(ALLOWED_METHODS)
#: The static catch-all a host answers `referrers/<unknown digest>` with (`EMPTY_REFERRERS`).
#: A name no repository can have (names start with [a-z0-9]), written by
#: `hosts.write_host_configs`.
EMPTY_REFERRERS_REL = "v2/_referrers-empty"
#: The browse page (`browse.py`) at the tree root, answered for `/` and `/index.html`.
BROWSE_REL = "index.html"
HTML = "text/html; charset=utf-8"
#: The browse page's per-repository data files, `browse/<sha256 of the bytes>.json`
#: (`browse_page.py`): named by content, so cached forever like a blob.
BROWSE_DATA_DIR = "browse"
#: Their tree paths as a regular expression (for the host renderers; no anchors).
BROWSE_DATA_RE = BROWSE_DATA_DIR + r"/[a-f0-9]{64}\.json"
_BROWSE_DATA = re.compile(BROWSE_DATA_DIR + r"/([a-f0-9]{64})\.json")


def browse_data_rel(hexdigest: str) -> str:
    return f"{BROWSE_DATA_DIR}/{hexdigest}.json"


def short_cache(seconds: int) -> str:
    """Cache-Control for what a sync may change: tags, tag lists, the catalog, referrers."""
    return f"public, max-age={seconds}" if seconds > 0 else "no-cache"


class Kind(Enum):
    PING = "ping"
    CATALOG = "catalog"
    TAGS_LIST = "tags-list"
    MANIFEST_TAG = "manifest-tag"
    MANIFEST_DIGEST = "manifest-digest"
    BLOB = "blob"
    REFERRERS = "referrers"
    BROWSE = "browse"
    BROWSE_DATA = "browse-data"


class ErrorCode(Enum):
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    DIGEST_INVALID = "DIGEST_INVALID"
    #: Any method but GET and HEAD (405): the registry is read-only.
    UNSUPPORTED = "UNSUPPORTED"


_ERROR_MESSAGES = {
    ErrorCode.MANIFEST_UNKNOWN: "manifest unknown",
    ErrorCode.BLOB_UNKNOWN: "blob unknown to registry",
    ErrorCode.NAME_UNKNOWN: "repository name not known to registry",
    ErrorCode.DIGEST_INVALID: "provided digest did not match uploaded content",
    ErrorCode.UNSUPPORTED: "this registry is read-only",
}


def error_body(code: ErrorCode, detail: str = "") -> bytes:
    """The OCI error document (`{"errors":[{"code":…,"message":…}]}`), compact."""
    entry: dict[str, object] = {"code": code.value, "message": _ERROR_MESSAGES[code]}
    if detail:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Target:
    """A request path understood as a registry object. `name`/`ref` are validated."""

    kind: Kind
    name: str = ""
    ref: str = ""

    @property
    def rel(self) -> str:
        """The tree path of the exact file (for manifests: the untyped file)."""
        if self.kind is Kind.PING:
            return Layout.rel_ping()
        if self.kind is Kind.CATALOG:
            return Layout.rel_catalog()
        if self.kind is Kind.TAGS_LIST:
            return Layout.rel_tags_list(self.name)
        if self.kind is Kind.BLOB:
            return Layout.rel_blob(self.name, self.ref)
        if self.kind is Kind.REFERRERS:
            return Layout.rel_referrers(self.name, self.ref)
        if self.kind is Kind.BROWSE:
            return BROWSE_REL
        if self.kind is Kind.BROWSE_DATA:
            return browse_data_rel(self.ref)
        return Layout.rel_manifest(self.name, self.ref)


@dataclass(frozen=True)
class Miss:
    """A path that is no registry object: what the 404 (or 400) says."""

    status: int
    code: ErrorCode


def classify(url_path: str) -> Target | Miss:
    """Map a URL path (`/v2/...`, query already removed) to a `Target`, or the `Miss`
    a host answers. Pure: says nothing about whether the object exists.

    Anything containing a dot-segment, a hidden component (`.registrish`, `.htaccess`)
    or a typed twin's `.~` suffix is a miss, so none of them is ever served by name.
    """
    path = url_path.lstrip("/")
    if path in ("", BROWSE_REL):
        return Target(Kind.BROWSE)
    data = _BROWSE_DATA.fullmatch(path)
    if data:
        return Target(Kind.BROWSE_DATA, ref=data.group(1))
    if path in ("v2", "v2/"):
        return Target(Kind.PING)
    if path == "v2/_catalog":
        return Target(Kind.CATALOG)
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "v2" or any(p == "" or p.startswith(".") for p in parts):
        return Miss(404, ErrorCode.NAME_UNKNOWN)
    name, section, ref = "/".join(parts[1:-2]), parts[-2], parts[-1]
    if not is_name(name):
        return Miss(404, ErrorCode.NAME_UNKNOWN)
    if section == "tags" and ref == "list":
        return Target(Kind.TAGS_LIST, name)
    if section == "manifests":
        if is_digest(ref):
            return Target(Kind.MANIFEST_DIGEST, name, ref)
        if is_tag(ref) and TWIN_SEPARATOR not in ref:
            return Target(Kind.MANIFEST_TAG, name, ref)
        # `sha256:baddigeststring` and friends: the conformance suite accepts 400 or 404.
        return Miss(404, ErrorCode.MANIFEST_UNKNOWN)
    if section == "blobs":
        return Target(Kind.BLOB, name, ref) if is_digest(ref) else Miss(404, ErrorCode.BLOB_UNKNOWN)
    if section == "referrers":
        if is_digest(ref):
            return Target(Kind.REFERRERS, name, ref)
        return Miss(400, ErrorCode.DIGEST_INVALID)
    return Miss(404, ErrorCode.NAME_UNKNOWN)


@dataclass(frozen=True)
class Policy:
    """Deployment knobs the table depends on."""

    tag_cache_seconds: int = 60


def headers_for(
    kind: Kind, *, policy: Policy, media_type: str | None = None, digest: str | None = None
) -> tuple[tuple[str, str], ...]:
    """The headers of a 200 answer (besides Content-Length/Range/validators).

    `media_type` is required for manifests; `digest` is the object's digest when the
    host can know it (a tag's digest is only known by hashing or from the lock).
    """
    short = short_cache(policy.tag_cache_seconds)
    if kind is Kind.PING:
        # Short, like every other mutable document: an explicit answer, so that no CDN in
        # front of a host picks its own lifetime for the ping.
        return (("Content-Type", JSON), ("Cache-Control", short), API_VERSION_HEADER)
    if kind is Kind.BROWSE:
        return (("Content-Type", HTML), ("Cache-Control", short))
    if kind is Kind.BROWSE_DATA:
        return (("Content-Type", JSON), ("Cache-Control", IMMUTABLE))
    if kind in (Kind.CATALOG, Kind.TAGS_LIST):
        return (("Content-Type", JSON), ("Cache-Control", short), API_VERSION_HEADER)
    if kind is Kind.REFERRERS:
        return (
            ("Content-Type", mediatypes.OCI_INDEX),
            ("Cache-Control", short),
            API_VERSION_HEADER,
        )
    if kind is Kind.BLOB:
        digest_headers = (("Docker-Content-Digest", digest),) if digest else ()
        return (
            ("Content-Type", OCTET_STREAM),
            *digest_headers,
            ("Cache-Control", IMMUTABLE),
            API_VERSION_HEADER,
        )
    if media_type not in mediatypes.MANIFEST_TYPES:
        raise ValueError(f"not a manifest media type: {media_type!r}")
    cache = IMMUTABLE if kind is Kind.MANIFEST_DIGEST else short
    digest_headers = (("Docker-Content-Digest", digest),) if digest else ()
    return (
        ("Content-Type", media_type),
        *digest_headers,
        ("Cache-Control", cache),
        API_VERSION_HEADER,
    )


def cache_problem(kind: Kind, served: str | None, policy: Policy) -> str | None:
    """What is wrong with the Cache-Control a host sent for a path of `kind`, or None.

    Hosts may add their own caching (a CDN's or Netlify's revalidation, S3 metadata set by
    hand), so only a lifetime longer than the route table's is a failure: a tag, a tag list
    or a referrers document kept past `tag_cache_seconds` (or forever) hides a sync. A
    missing header or a shorter lifetime only costs requests."""
    wanted = dict(headers_for(kind, policy=policy, media_type=mediatypes.OCI_MANIFEST))
    expected = wanted.get("Cache-Control", "")
    if not served or expected == IMMUTABLE:
        return None
    ages = [int(m) for m in _MAX_AGE.findall(served)]
    limit = policy.tag_cache_seconds
    if "immutable" in served.lower() or any(age > limit for age in ages):
        return (
            f"Cache-Control is {served!r}, expected {expected!r}: clients and caches would "
            f"keep it past the next sync (set the host's caching from registrish's config)"
        )
    return None


def object_headers(kind: Kind, policy: Policy, media_type: str | None) -> tuple[str, str]:
    """(Content-Type, Cache-Control) of a stored object, from `headers_for`: the metadata
    `publish` and the bucket tree give each object they upload."""
    headers = dict(headers_for(kind, policy=policy, media_type=media_type))
    return headers["Content-Type"], headers["Cache-Control"]


def error_headers() -> tuple[tuple[str, str], ...]:
    return (("Content-Type", JSON), API_VERSION_HEADER)


# --- the objects of one tree ----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ManifestObject:
    name: str
    ref: str  # a tag or the digest
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, order=True)
class BlobObject:
    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class TreeObjects:
    """Everything a deployment of the tree must serve (from the lock + manifests)."""

    names: tuple[str, ...]
    #: Tags and digests, each a separate path (by tag and by digest).
    manifests: tuple[ManifestObject, ...]
    blobs: tuple[BlobObject, ...]
    #: (name, subject digest) for every manifest: each has a referrers document path.
    referrers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, order=True)
class Entry:
    """One path of the tree and the headers of its 200 answer (from `headers_for`)."""

    path: str  # relative to the root, e.g. "v2/a/manifests/v1"
    kind: Kind
    headers: tuple[tuple[str, str], ...]
    digest: str | None = None
    size: int | None = None

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key == name), "")

    @property
    def content_type(self) -> str:
        return self.header("Content-Type")

    @property
    def cache_control(self) -> str:
        return self.header("Cache-Control")


def entries(objects: TreeObjects, policy: Policy) -> list[Entry]:
    """Every path with its answer, sorted. Pure: the input of `_headers`, S3 metadata
    and `check`."""

    def entry(
        path: str,
        kind: Kind,
        media_type: str | None = None,
        digest: str | None = None,
        size: int | None = None,
    ) -> Entry:
        headers = headers_for(kind, policy=policy, media_type=media_type, digest=digest)
        return Entry(path, kind, headers, digest, size)

    result = [entry(Layout.rel_ping(), Kind.PING), entry(Layout.rel_catalog(), Kind.CATALOG)]
    result += [entry(Layout.rel_tags_list(n), Kind.TAGS_LIST) for n in objects.names]
    for m in objects.manifests:
        kind = Kind.MANIFEST_DIGEST if is_digest(m.ref) else Kind.MANIFEST_TAG
        path = Layout.rel_manifest(m.name, m.ref)
        result.append(entry(path, kind, m.media_type, m.digest, m.size))
    for b in objects.blobs:
        result.append(entry(Layout.rel_blob(b.name, b.digest), Kind.BLOB, None, b.digest, b.size))
    for name, digest in objects.referrers:
        result.append(entry(Layout.rel_referrers(name, digest), Kind.REFERRERS))
    return sorted(set(result))


def objects_from(lock: Lock, manifests: Iterable[tuple[str, bytes]]) -> TreeObjects:
    """Derive the objects from the lock plus the bytes of its manifests (`(name, bytes)`
    for every locked manifest, top-level and platform children). Pure."""
    names = tuple(lock.names())
    found: set[ManifestObject] = set()
    blobs: set[BlobObject] = set()
    refs: set[tuple[str, str]] = set()
    regular = {t.key for t in lock.tags}
    for t in lock.tags:
        found.add(ManifestObject(t.name, t.tag, t.digest, t.media_type, t.size))
        found.add(ManifestObject(t.name, t.digest, t.digest, t.media_type, t.size))
        refs.add((t.name, t.digest))
        for p in t.platforms:
            found.add(ManifestObject(t.name, p.digest, p.digest, p.media_type, p.size))
            refs.add((t.name, p.digest))
        for r in t.referrers:  # artifacts: by digest, and by cosign tag unless locked as a tag
            found.add(ManifestObject(t.name, r.digest, r.digest, r.media_type, r.size))
            refs.add((t.name, r.digest))
            if r.tag and (t.name, r.tag) not in regular:
                found.add(ManifestObject(t.name, r.tag, r.digest, r.media_type, r.size))
    for name, data in manifests:
        parsed = parse_manifest(data)
        for d in parsed.blobs:
            blobs.add(BlobObject(name, d.digest, d.size))
    return TreeObjects(
        names=names,
        manifests=tuple(sorted(found)),
        blobs=tuple(sorted(blobs)),
        referrers=tuple(sorted(refs)),
    )


def images_of(t: LockedTag) -> list[tuple[str, str]]:
    """(digest, media type) of a locked tag's manifests: its own, its platforms', its
    referrers' (what may name blobs)."""
    images = [(t.digest, t.media_type)] + [(p.digest, p.media_type) for p in t.platforms]
    return images + [(r.digest, r.media_type) for r in t.referrers]


def read_objects(layout: Layout, lock: Lock) -> TreeObjects:
    """`objects_from` with the manifests read from the tree (image manifests only:
    an index names no blobs). A missing manifest file is skipped; `check --local`
    reports it."""
    data: list[tuple[str, bytes]] = []
    seen: set[tuple[str, str]] = set()
    for t in lock.tags:
        for digest, media_type in images_of(t):
            if mediatypes.is_index(media_type) or (t.name, digest) in seen:
                continue
            seen.add((t.name, digest))
            try:
                data.append((t.name, layout.path(Layout.rel_manifest(t.name, digest)).read_bytes()))
            except FileNotFoundError:
                continue
    return objects_from(lock, data)
