"""The behaviour of `registrish serve`, without the socket: `TreeResolver.answer` maps a
request (method, path, Range) to an `Answer` from the tree on disk, with exactly the route
table's semantics (`routes`), plus what only a dynamic server can do: paginated
`tags/list?n=&last=` and filtered `referrers/<digest>?artifactType=`. `serve` sends it.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..oci import mediatypes
from ..oci.manifest import sha256_digest
from ..oci.reference import is_tag
from ..tree.layout import Layout
from .routes import (
    ALLOW,
    ALLOWED_METHODS,
    EMPTY_REFERRERS,
    PING_DOCUMENT,
    ErrorCode,
    Kind,
    Miss,
    Policy,
    Target,
    classify,
    error_body,
    error_headers,
    headers_for,
)

Headers = tuple[tuple[str, str], ...]
_MAX_KIND_HINTS = 100_000


@dataclass(frozen=True)
class Answer:
    """What to send: status, headers, and either `body` or `size` bytes of `file`
    from `offset`. `Content-Length` is added by the sender."""

    status: int
    headers: Headers
    body: bytes = b""
    file: Path | None = None
    offset: int = 0
    size: int = 0

    @property
    def length(self) -> int:
        return self.size if self.file is not None else len(self.body)


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range → (start, end inclusive); None to ignore the header (send
    everything, as RFC 9110 allows for multiple or malformed ranges); False when the
    range cannot be satisfied (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return False
            return (max(0, size - suffix), size - 1) if size else False
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return False
    if end < start:
        return None
    return start, min(end, size - 1)


@dataclass
class TreeResolver:
    """Answers requests from a tree on disk. Thread-safe; digests of tag files are
    computed once per file version (sync replaces files, so the inode changes)."""

    layout: Layout
    policy: Policy = field(default_factory=Policy)
    _digests: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    #: The kind a manifest path was last found as, tried first: a miss costs an open().
    #: Only a hint: a stale one costs one failed open, then the usual probe.
    _kinds: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, raw_path: str, headers: Mapping[str, str]) -> Answer:
        """`headers` has lower-case names."""
        if method not in ALLOWED_METHODS:
            return Answer(
                405,
                (*error_headers(), ("Allow", ALLOW)),
                error_body(ErrorCode.UNSUPPORTED),
            )
        split = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qs(split.query) if split.query else {}
        target = classify(path)
        if isinstance(target, Miss):
            return self._error(target.status, target.code, path)
        if target.kind is Kind.PING:
            return Answer(200, headers_for(Kind.PING, policy=self.policy), PING_DOCUMENT)
        # Manifests and blobs look for their file first and ask whether the repository
        # exists only on a miss: one stat less on every hit, the hot path.
        if target.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
            return self._manifest(target)
        if target.kind is Kind.BLOB:
            return self._blob(target, headers.get("range"))
        if target.name and not self.layout.repo_dir(target.name).is_dir():
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        if target.kind is Kind.REFERRERS:
            return self._referrers(target, query.get("artifactType", []))
        if target.kind is Kind.TAGS_LIST:
            return self._tags_list(target, query)
        return self._json_file(target)

    # --- kinds ---------------------------------------------------------------------------
    def _error(self, status: int, code: ErrorCode, detail: str) -> Answer:
        return Answer(status, error_headers(), error_body(code, detail))

    def _missing(self, target: Target, code: ErrorCode, detail: str) -> Answer:
        """404 for a missing manifest or blob: NAME_UNKNOWN when the repository is absent."""
        if not self.layout.repo_dir(target.name).is_dir():
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        return self._error(404, code, detail)

    def _manifest(self, target: Target) -> Answer:
        exact = str(self.layout.path(target.rel))
        hint = self._kinds.get(exact)
        kinds = mediatypes.KINDS if hint is None else (hint, *mediatypes.KINDS)
        for kind in kinds:
            media_type = mediatypes.TYPE_OF_KIND[kind]
            twin = f"{exact}.~{kind}"
            # Read the bytes now, through one open file: sync may replace (or, on a kind
            # change, remove) a tag's twin before the handler would open it, and length,
            # digest and body must all describe one version (tests/test_crash_serve.py).
            try:
                fd = os.open(twin, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                st = os.fstat(fd)
                data = _read_all(fd, st.st_size)
            finally:
                os.close(fd)
            if hint != kind:
                if len(self._kinds) >= _MAX_KIND_HINTS:
                    self._kinds.clear()  # bounded; refilled by the next requests
                self._kinds[exact] = kind
            digest = target.ref if target.kind is Kind.MANIFEST_DIGEST else self._digest(data, st)
            return Answer(
                200,
                headers_for(target.kind, policy=self.policy, media_type=media_type, digest=digest),
                data,
            )
        return self._missing(target, ErrorCode.MANIFEST_UNKNOWN, f"{target.name}:{target.ref}")

    def _digest(self, data: bytes, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._digests.get(key)
        if cached is None:
            cached = sha256_digest(data)
            with self._lock:
                self._digests[key] = cached
        return cached

    def _blob(self, target: Target, range_header: str | None) -> Answer:
        path = self.layout.path(target.rel)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return self._missing(target, ErrorCode.BLOB_UNKNOWN, target.ref)
        base = (
            *headers_for(Kind.BLOB, policy=self.policy, digest=target.ref),
            ("Accept-Ranges", "bytes"),
        )
        wanted = parse_range(range_header, size) if range_header else None
        if wanted is False:
            return Answer(416, (*base, ("Content-Range", f"bytes */{size}")))
        if isinstance(wanted, tuple):
            start, end = wanted
            return Answer(
                206,
                (*base, ("Content-Range", f"bytes {start}-{end}/{size}")),
                file=path,
                offset=start,
                size=end - start + 1,
            )
        return Answer(200, base, file=path, size=size)

    def _referrers(self, target: Target, artifact_types: list[str]) -> Answer:
        headers = headers_for(Kind.REFERRERS, policy=self.policy)
        try:
            data = self.layout.path(target.rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            data = EMPTY_REFERRERS
        if not artifact_types:
            return Answer(200, headers, data)
        doc = json.loads(data)
        # a literal '+' (application/spdx+json) arrives form-decoded as ' '; no media type
        # has a space, so take it back
        wanted = {t.replace(" ", "+") for t in artifact_types}
        doc["manifests"] = [m for m in doc.get("manifests", []) if m.get("artifactType") in wanted]
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Answer(200, (*headers, ("OCI-Filters-Applied", "artifactType")), body)

    def _json_file(self, target: Target) -> Answer:
        path = self.layout.path(target.rel)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name or target.rel)
        return Answer(200, headers_for(target.kind, policy=self.policy), file=path, size=size)

    def _tags_list(self, target: Target, query: Mapping[str, list[str]]) -> Answer:
        if "n" not in query and "last" not in query:
            return self._json_file(target)
        try:
            doc = json.loads(self.layout.path(target.rel).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        tags = sorted(t for t in doc.get("tags") or [] if isinstance(t, str) and is_tag(t))
        last = query.get("last", [""])[0]
        if last:
            tags = [t for t in tags if t > last]
        headers = headers_for(Kind.TAGS_LIST, policy=self.policy)
        n_text = query.get("n", [""])[0]
        if n_text:
            try:
                n = int(n_text)
            except ValueError:
                return Answer(
                    400,
                    error_headers(),
                    json.dumps(
                        {"errors": [{"code": "PAGINATION_NUMBER_INVALID", "message": "invalid n"}]}
                    ).encode(),
                )
            if 0 <= n < len(tags):
                tags = tags[:n]
                if tags:
                    nxt = urllib.parse.urlencode({"n": n, "last": tags[-1]})
                    link = f'</v2/{target.name}/tags/list?{nxt}>; rel="next"'
                    headers = (*headers, ("Link", link))
        body = json.dumps({"name": target.name, "tags": tags}, separators=(",", ":")).encode()
        return Answer(200, headers, body)


def _read_all(fd: int, size: int) -> bytes:
    """The `size` bytes of a file from `fd`. Files in the tree are replaced, never written
    in place, so the size from fstat is the file's: no read for an end-of-file is needed
    (os.read may still return less than asked)."""
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
