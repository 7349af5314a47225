"""`registrish check`: prove that a deployment (or the tree on disk) serves every
locked object the way the route table says.

`check_url` walks the lock over HTTP: the `/v2/` ping, every tag and manifest digest
(top level and platform children, `HEAD` and `GET`), every referrers document, every
blob (`HEAD`; `GET` and re-hash with `deep`), two objects that must be 404, the browse data.
`check_local` verifies the tree on disk. Both return a `Report`; nothing is printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import httpx

from .. import USER_AGENT
from ..errors import IntegrityError, UpstreamError
from ..lock.lockfile import Lock
from ..oci import mediatypes
from ..oci.manifest import Manifest, parse_manifest, sha256_digest
from ..oci.referrers import artifact_type_of, referrers_problems, refers_to
from ..tls import certificate_problem, client_context
from ..tree.layout import Layout
from .checkbrowse import check_browse, over_http
from .checkurl import redact_url, validate_url
from .routes import (
    EMPTY_REFERRERS_REL,
    BlobObject,
    Kind,
    Policy,
    cache_problem,
    headers_for,
    images_of,
    objects_from,
)
from .treefiles import TreeFiles

__all__ = ["check_local", "check_url", "referrers_problems", "validate_url"]

NOT_CONFIGURED = "the host is not applying registrish's config"
RELOAD = "the host's config is older than the tree: reload the server after every sync"
S3_403 = (
    "403 where 404 is expected: an S3 bucket answers 403 for missing keys unless anonymous "
    "readers may s3:ListBucket; allow it (or put a CDN that maps 403 to 404 in front)"
)


@dataclass(frozen=True)
class Failure:
    path: str
    problem: str


@dataclass
class Report:
    target: str
    checked: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, path: str, problem: str) -> None:
        self.failures.append(Failure(path, problem))

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "checked": self.checked,
            "ok": self.ok,
            "failures": [{"path": f.path, "problem": f.problem} for f in self.failures],
        }


#: What the route table answers for the referrers document (check wants it exactly).
REFERRERS_TYPE = dict(headers_for(Kind.REFERRERS, policy=Policy()))["Content-Type"]


def _random_digest() -> str:
    return "sha256:" + secrets.token_hex(32)


class _HttpChecker:
    def __init__(self, client: httpx.Client, report: Report, deep: bool, policy: Policy) -> None:
        self.client = client
        self.report = report
        self.deep = deep
        self.policy = policy

    def cache_control(self, resp: httpx.Response, path: str, kind: Kind) -> None:
        problem = cache_problem(kind, resp.headers.get("Cache-Control"), self.policy)
        if problem is not None:
            self.report.fail(path, problem)

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        try:
            return self._send(method, path, kwargs)
        except httpx.HTTPError as exc:
            self.report.fail(path, f"{method} failed: {type(exc).__name__}: {exc}")
            return None

    def _send(self, method: str, path: str, kwargs: dict[str, object]) -> httpx.Response:
        try:
            return self.client.request(method, "/" + path, **kwargs)  # type: ignore[arg-type]
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # A kept-alive connection the host closed as we reused it (seen with SeaweedFS
            # under load): GET and HEAD are safe to send again, once.
            return self.client.request(method, "/" + path, **kwargs)  # type: ignore[arg-type]

    def status(self, resp: httpx.Response, path: str, what: str) -> bool:
        if resp.status_code == 200:
            return True
        problem = f"{what} answered {resp.status_code}, expected 200"
        if resp.status_code == 403:
            problem += " (a 403 usually means the object is missing on an S3-like host)"
        self.report.fail(path, problem)
        return False

    def ping(self) -> None:
        """Raises UpstreamError when the host gives no HTTP answer at all: every other
        object would fail the same way, one row each."""
        self.report.checked += 1
        try:
            resp = self.client.request("GET", "/v2/")
        except httpx.TransportError as exc:
            url = redact_url(str(self.client.base_url.join("v2/")))
            untrusted = certificate_problem(url, exc)
            if untrusted is not None:
                raise untrusted from None
            raise UpstreamError(
                f"{url}: no answer: {type(exc).__name__}: {exc}",
                hint="check the URL, and that the server is running and reachable from here",
            ) from None
        if resp.status_code == 403:
            self.report.fail(
                "v2/",
                "the /v2/ ping answered 403: skopeo and podman refuse a registry whose ping is "
                "403; upload the v2/ key (registrish publish does) and let readers ListBucket",
            )
        elif resp.status_code not in (200, 401):
            self.report.fail("v2/", f"the /v2/ ping answered {resp.status_code}, expected 200")
        # An empty body passes: no client reads the ping's body, and SeaweedFS keeps none
        # for a key ending in `/` (what `v2/` is). An HTML page (a host's fallback) fails.
        elif resp.status_code == 200 and resp.content and not isinstance(_json(resp.content), dict):
            self.report.fail(
                "v2/", f"the /v2/ ping answered {_what_body(resp)}, expected JSON ({{}})"
            )
        if resp.status_code == 200:
            self.cache_control(resp, "v2/", Kind.PING)

    def manifest(self, path: str, digest: str, media_type: str, size: int) -> bytes | None:
        """HEAD then GET one manifest path; returns the verified body."""
        self.report.checked += 1
        headers = {"Accept": mediatypes.ACCEPT}
        body = None
        for method in ("HEAD", "GET"):
            resp = self.request(method, path, headers=headers)
            if resp is None or not self.status(resp, path, f"manifest {method}"):
                return None
            got = mediatypes.strip_parameters(resp.headers.get("Content-Type", ""))
            if resp.headers.get("Content-Type", "") != media_type:
                shown = resp.headers.get("Content-Type") or "no Content-Type"
                if got == media_type:
                    extra = " (exactly, no parameters)"
                elif got in mediatypes.MANIFEST_TYPES and not _by_digest(path):
                    extra = f" (another version of the tag: {RELOAD})"
                else:
                    extra = f": {NOT_CONFIGURED}"
                self.report.fail(
                    path, f"manifest {path} served as {shown}, expected {media_type}{extra}"
                )
                return None
            self.digest_header(resp, path, digest, method)
            self.length(resp, path, size, method, manifest=True)
            self.cache_control(
                resp, path, Kind.MANIFEST_DIGEST if _by_digest(path) else Kind.MANIFEST_TAG
            )
            if method == "GET":
                body = resp.content
        assert body is not None
        if sha256_digest(body) != digest:
            self.report.fail(path, f"manifest bytes do not hash to {digest}")
            return None
        return body

    def digest_header(self, resp: httpx.Response, path: str, digest: str, method: str) -> None:
        sent = resp.headers.get("Docker-Content-Digest")
        if sent is not None and "Content-Length" not in resp.headers:
            self.report.fail(
                path,
                f"{method}: Docker-Content-Digest without Content-Length: docker refuses it "
                "(missing or empty Content-Length header); send both or neither",
            )
        if sent is not None and sent != digest:
            stale = "" if _by_digest(path) else f" ({RELOAD})"
            self.report.fail(
                path, f"{method}: Docker-Content-Digest is {sent}, expected {digest}{stale}"
            )

    def length(
        self, resp: httpx.Response, path: str, size: int, method: str, *, manifest: bool = False
    ) -> None:
        """Content-Length, and no compression: clients decode a compressed manifest
        transparently (its Content-Length is then the compressed size), never a blob."""
        sent = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
        if sent is not None and sent != str(size) and not (manifest and encoded):
            self.report.fail(path, f"{method}: Content-Length is {sent}, expected {size}")
        if encoded and not manifest:
            self.report.fail(
                path,
                f"{method}: Content-Encoding {resp.headers['Content-Encoding']}: the host "
                "compresses registry objects, which breaks digests; turn compression off",
            )

    def referrers(self, path: str, expected: Mapping[str, str]) -> None:
        """`expected`: digest → artifactType of each referrer the document must list."""
        self.report.checked += 1
        resp = self.request("GET", path)
        if resp is None or not self.status(resp, path, "referrers"):
            return
        got = resp.headers.get("Content-Type", "")
        if got != REFERRERS_TYPE:
            self.report.fail(
                path,
                f"referrers {path} served as {got or 'no Content-Type'}, expected "
                f"{REFERRERS_TYPE} exactly: {NOT_CONFIGURED}",
            )
            return
        self.cache_control(resp, path, Kind.REFERRERS)
        for problem in referrers_problems(resp.content, expected):
            self.report.fail(path, problem)

    def blob(self, blob: BlobObject) -> None:
        path = Layout.rel_blob(blob.name, blob.digest)
        self.report.checked += 1
        resp = self.request("HEAD", path)
        if resp is None or not self.status(resp, path, "blob HEAD"):
            return
        self.digest_header(resp, path, blob.digest, "HEAD")
        self.length(resp, path, blob.size, "HEAD")
        if not self.deep:
            return
        hasher, total = hashlib.sha256(), 0
        try:
            with self.client.stream("GET", "/" + path) as stream:
                if not self.status(stream, path, "blob GET"):
                    return
                for chunk in stream.iter_raw():
                    hasher.update(chunk)
                    total += len(chunk)
        except httpx.HTTPError as exc:
            self.report.fail(path, f"GET failed: {type(exc).__name__}: {exc}")
            return
        if total != blob.size or "sha256:" + hasher.hexdigest() != blob.digest:
            self.report.fail(path, f"downloaded {total} bytes that do not hash to {blob.digest}")

    def missing(self, path: str, what: str, *, or_empty_index: bool = False) -> None:
        """404 with a body that is not a web page (clients parse it as an OCI error:
        "invalid character '<'"); with `or_empty_index`, a 200 empty referrers index too."""
        self.report.checked += 1
        resp = self.request("GET", path, headers={"Accept": mediatypes.ACCEPT})
        if resp is None:
            return
        if resp.status_code == 200 and or_empty_index:
            if resp.headers.get("Content-Type") != REFERRERS_TYPE:
                got = resp.headers.get("Content-Type") or "no Content-Type"
                self.report.fail(path, f"{what} served as {got}, expected {REFERRERS_TYPE}")
            self.cache_control(resp, path, Kind.REFERRERS)
            for problem in referrers_problems(resp.content, {}):
                self.report.fail(path, f"{what}: {problem} ({_what_body(resp)})")
        elif resp.status_code == 403:
            self.report.fail(path, f"a missing {what} answered 403: {S3_403}")
        elif resp.status_code != 404:
            self.report.fail(path, f"a missing {what} answered {resp.status_code}, expected 404")
        elif _is_html(resp):
            self.report.fail(
                path,
                f"a missing {what} answered 404 with an HTML page: clients expect a JSON "
                "error (registrish writes 404.html for Netlify and Cloudflare Pages)",
            )


def _expected_referrers(
    lock: Lock, bodies: Mapping[tuple[str, str], bytes]
) -> dict[tuple[str, str], dict[str, str]]:
    """(name, subject) → {referrer digest: artifactType} from the locked referrers whose
    (verified) manifest bytes name that subject; a cosign artifact without one is a tag only."""
    expected: dict[tuple[str, str], dict[str, str]] = {}
    for t in lock.tags:
        for r in t.referrers:
            body = bodies.get((t.name, r.digest))
            if body is None:
                continue
            parsed = parse_manifest(body)
            if refers_to(parsed, r.subject):
                expected.setdefault((t.name, r.subject), {})[r.digest] = artifact_type_of(parsed)
    return expected


def check_url(
    base_url: str,
    lock: Lock,
    *,
    deep: bool = False,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 30.0,
    policy: Policy | None = None,
) -> Report:
    """Check a deployment at `base_url` (the host root, where `/v2/` lives) against the
    route table under `policy` (the config's `tag_cache_seconds`). Raises a usage error
    for a URL that is not http(s), UpstreamError when nothing answers."""
    validate_url(base_url)
    report = Report(target=redact_url(base_url))
    with httpx.Client(
        base_url=base_url.rstrip("/"),
        transport=transport,
        verify=client_context(),  # the system's CAs or SSL_CERT_FILE, not certifi's
        timeout=timeout,
        follow_redirects=True,  # blobs are often redirected to a CDN or bucket
        headers={"User-Agent": USER_AGENT},
    ) as client:
        c = _HttpChecker(client, report, deep, policy or Policy())
        c.ping()
        bodies: list[tuple[str, bytes]] = []
        subjects: set[tuple[str, str]] = set()
        by_digest: dict[tuple[str, str], bytes] = {}
        tags = {t.key for t in lock.tags}
        for t in lock.tags:
            c.manifest(Layout.rel_manifest(t.name, t.tag), t.digest, t.media_type, t.size)
            wanted = [(t.digest, t.media_type, t.size)]
            wanted += [(p.digest, p.media_type, p.size) for p in t.platforms]
            wanted += [(r.digest, r.media_type, r.size) for r in t.referrers]
            for digest, media_type, size in wanted:
                if (t.name, digest) in subjects:
                    continue
                subjects.add((t.name, digest))
                body = c.manifest(Layout.rel_manifest(t.name, digest), digest, media_type, size)
                if body is not None:
                    by_digest[(t.name, digest)] = body
                if body is not None and not mediatypes.is_index(media_type):
                    bodies.append((t.name, body))
            for r in t.referrers:  # cosign tags, unless the same name is a locked tag
                if r.tag and (t.name, r.tag) not in tags:
                    tags.add((t.name, r.tag))
                    c.manifest(Layout.rel_manifest(t.name, r.tag), r.digest, r.media_type, r.size)
        expected = _expected_referrers(lock, by_digest)
        for name, digest in sorted(subjects):
            c.referrers(Layout.rel_referrers(name, digest), expected.get((name, digest), {}))
        blobs: set[BlobObject] = set()
        for name, body in bodies:
            parsed: Manifest = parse_manifest(body)
            blobs.update(BlobObject(name, d.digest, d.size) for d in parsed.blobs)
        for blob in sorted(blobs):
            c.blob(blob)
        names = lock.names()
        if names:
            c.missing(Layout.rel_manifest(names[0], _random_digest()), "manifest")
            c.missing(Layout.rel_blob(names[0], _random_digest()), "blob")
            unknown = Layout.rel_referrers(names[0], _random_digest())
            c.missing(unknown, "referrers of an unknown digest", or_empty_index=True)
        check_browse(report, lock, over_http(c), page_required=False)
    return report


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _is_html(resp: httpx.Response) -> bool:
    head = resp.content[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<head" in head


def _what_body(resp: httpx.Response) -> str:
    kind = "an HTML page" if _is_html(resp) else "a body that is not a JSON document"
    return f"{kind} ({resp.headers.get('Content-Type') or 'no Content-Type'})"


def _files(lock: Lock) -> Iterator[tuple[str, str, str]]:
    """(relative path, expected digest, media type) of every locked manifest path."""
    tags = {t.key for t in lock.tags}
    for t in lock.tags:
        yield Layout.rel_manifest(t.name, t.tag), t.digest, t.media_type
        yield Layout.rel_manifest(t.name, t.digest), t.digest, t.media_type
        for p in t.platforms:
            yield Layout.rel_manifest(t.name, p.digest), p.digest, p.media_type
        for r in t.referrers:
            yield Layout.rel_manifest(t.name, r.digest), r.digest, r.media_type
            if r.tag and (t.name, r.tag) not in tags:
                yield Layout.rel_manifest(t.name, r.tag), r.digest, r.media_type


def check_local(layout: Layout, lock: Lock) -> Report:
    """Verify the tree on disk: every manifest file hashes to its digest and its typed
    twin is a hardlink of it, every blob is present and hashes to its name, every tag
    is listed, every manifest has a referrers document."""
    report = Report(target=str(layout.root))
    tree = TreeFiles(layout)
    for rel in (Layout.rel_ping(), Layout.rel_catalog(), EMPTY_REFERRERS_REL):
        report.checked += 1
        if not os.path.isfile(tree.abspath(rel)):
            report.fail(rel, "missing (run `registrish sync`, then `registrish hosts`)")
    # One repository at a time (everything checked is keyed by the repository): the bytes
    # of its manifests are held while its blobs are checked, never the whole tree's.
    for _name, part in lock.by_repository():
        if not _check_repository(tree, part, report):
            break
    return report


def _check_repository(tree: TreeFiles, lock: Lock, report: Report) -> bool:
    """`check_local` for a lock of one repository; False when its manifests do not parse
    (nothing further can be derived)."""
    verified: dict[str, bytes] = {}  # rel → manifest bytes that hash to their digest
    for rel, digest, media_type in sorted(set(_files(lock))):
        report.checked += 1
        got = tree.digest(rel, keep=True)
        if got is None:
            report.fail(rel, "missing manifest file (run `registrish sync`)")
            continue
        if got[0] != digest:
            report.fail(rel, f"hashes to {got[0]}, expected {digest}")
        elif got[2] is not None:
            verified[rel] = got[2]
        twin = f"{rel}.~{mediatypes.KIND_OF[media_type]}"
        twin_inode = tree.inode(twin)
        if twin_inode is None:
            report.fail(
                rel, f"typed twin {twin.rsplit('/', 1)[-1]} is missing: hosts cannot type it"
            )
        elif twin_inode != got[1]:
            report.fail(
                rel, f"typed twin {twin.rsplit('/', 1)[-1]} is not a hardlink of the manifest"
            )
    # The blobs are named by the verified image manifests (an index names none).
    images: dict[tuple[str, str], bytes] = {}
    for t in lock.tags:
        for digest, media_type in images_of(t):
            body = verified.get(Layout.rel_manifest(t.name, digest))
            if body is not None and not mediatypes.is_index(media_type):
                images[(t.name, digest)] = body
    try:
        objects = objects_from(lock, ((name, body) for (name, _), body in images.items()))
    except IntegrityError as exc:
        report.fail("(manifests)", str(exc))
        return False
    for blob in objects.blobs:
        rel = Layout.rel_blob(blob.name, blob.digest)
        report.checked += 1
        found = tree.digest(rel)
        if found is None:
            report.fail(rel, "missing blob (run `registrish sync`)")
        elif found[0] != blob.digest:
            report.fail(rel, f"hashes to {found[0]}: the file is corrupt (run `registrish sync`)")
    artifacts = {
        (t.name, r.digest): verified[rel]
        for t in lock.tags
        for r in t.referrers
        if (rel := Layout.rel_manifest(t.name, r.digest)) in verified
    }
    expected = _expected_referrers(lock, artifacts)
    for name, digest in objects.referrers:
        rel = Layout.rel_referrers(name, digest)
        report.checked += 1
        data = tree.read(rel)
        if data is None:
            report.fail(rel, "missing referrers document (run `registrish sync`)")
            continue
        for problem in referrers_problems(data, expected.get((name, digest), {})):
            report.fail(rel, problem)
    locked = [t.tag for t in lock.tags]
    for name in objects.names:  # the one repository
        rel = Layout.rel_tags_list(name)
        report.checked += 1
        try:
            listed = set(json.loads(tree.read(rel) or b"").get("tags") or [])
        except (ValueError, AttributeError):
            report.fail(rel, "missing or not a JSON tag list (run `registrish sync`)")
            continue
        for tag in locked:
            if tag not in listed:
                report.fail(rel, f"tag {tag} is locked but not listed")
    return True


def _by_digest(path: str) -> bool:
    """A manifest path by digest (immutable), not by tag (moved by syncs)."""
    return path.rsplit("/", 1)[-1].startswith("sha256:")
