"""`registrish publish`: mirror the tree into S3-compatible object storage.

Three steps, pip-tools style: observe (walk the tree → `LocalObject`s; list the bucket
once → `RemoteObject`s), plan (pure: `plan_publish` → `PublishPlan`), execute (uploads
phase by phase, then deletes). The bucket is reached only through the `Store` protocol:
`Boto3Store` in production (boto3 is the optional extra `registrish[s3]`, imported lazily),
a wrapper or fake in tests.

What counts as "unchanged" (the remote listing is all we look at, one LIST per 1000 keys):
- digest-addressed objects (blobs, manifests by digest) are immutable: same key and size;
- everything else (tags, tag lists, catalog, referrers, ping) is small and uploaded with a
  single PUT, so its ETag is the MD5 of its bytes: equal ETag means equal content. Where a
  store's ETag is no MD5 (SSE-KMS, a multipart upload by another tool) the object is
  re-uploaded every time: correct, only slower.
Metadata (Content-Type, Cache-Control) is not in a listing: after changing
`tag_cache_seconds`, or to repair objects uploaded by another tool, use `--force`.

Order never exposes a reference before its content: blobs → manifests by digest →
referrers → tag manifests → tag lists → catalog → ping, each phase finished before the
next starts; `--delete` runs last, in the reverse order (tags go before what they name).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from ..console import Console, human_bytes
from ..errors import ExitCode, IntegrityError, LocalError, RegistrishError
from ..progress import Progress, Stopwatch
from ..tree.layout import PING_FILE, Layout, split_twin
from ..tree.state import hash_file
from .routes import BROWSE_REL, Kind, Miss, Policy, Target, classify, headers_for, short_cache

DEFAULT_JOBS = 8
#: Objects larger than this go up in parts (boto3 TransferConfig); S3's minimum part is 5 MiB.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
#: Objects up to this size are read into memory and sent with one PUT and a Content-MD5.
SINGLE_PUT_MAX = 1024 * 1024
#: The key that answers `GET /v2/` (S3 serves a key ending in `/` for that URL path).
PING_KEY = "v2/"
_CHUNK = 1 << 20
_DELETE_BATCH = 1000  # DeleteObjects' limit


class PublishError(RegistrishError):
    """The object store refused or failed (credentials, bucket, network)."""

    exit_code = ExitCode.UPSTREAM


class MissingExtraError(RegistrishError):
    """boto3 is not installed."""


class TreeError(RegistrishError):
    """The tree on disk is inconsistent (a manifest without its typed twin, …)."""

    exit_code = ExitCode.LOCAL


# --- the target -----------------------------------------------------------------------------

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str = ""  # no leading/trailing slash; "" is the bucket root

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    @property
    def list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Target:
    """`s3://BUCKET[/PREFIX]` → S3Target. Bucket names follow S3's rules (lowercase,
    3-63 characters); the prefix may not contain empty, `.` or `..` segments."""
    hint = "write it as s3://BUCKET or s3://BUCKET/PREFIX"
    if not url.startswith("s3://"):
        raise RegistrishError(f"{url!r} is not an s3:// URL", hint=hint)
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise RegistrishError(f"{url!r}: {bucket!r} is not a valid bucket name", hint=hint)
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise RegistrishError(f"{url!r}: the prefix {prefix!r} has an empty or dot segment")
    return S3Target(bucket, prefix)


# --- what the tree holds ------------------------------------------------------------------


class Phase(IntEnum):
    """Upload order (deletes run in reverse)."""

    BLOBS = 0
    MANIFESTS = 1  # by digest
    REFERRERS = 2
    TAGS = 3
    TAG_LISTS = 4
    CATALOG = 5
    PING = 6
    BROWSE = 7  # the root's index.html, which links to everything else


_PHASE_OF_KIND = {
    Kind.BLOB: Phase.BLOBS,
    Kind.MANIFEST_DIGEST: Phase.MANIFESTS,
    Kind.REFERRERS: Phase.REFERRERS,
    Kind.MANIFEST_TAG: Phase.TAGS,
    Kind.TAGS_LIST: Phase.TAG_LISTS,
    Kind.CATALOG: Phase.CATALOG,
    Kind.PING: Phase.PING,
    Kind.BROWSE: Phase.BROWSE,
}


@dataclass(frozen=True, order=True)
class LocalObject:
    """One object the bucket must hold: its key (relative to the prefix), the tree file
    it comes from, and the metadata the route table prescribes."""

    phase: Phase
    key: str
    source: str  # tree path relative to the root
    size: int
    content_type: str
    cache_control: str
    #: Digest-addressed: the digest in its name (verified before upload). Else None.
    digest: str | None = None
    #: MD5 (hex) of the bytes of a mutable object, compared with the remote ETag.
    md5: str | None = None

    @property
    def immutable(self) -> bool:
        return self.digest is not None


@dataclass(frozen=True)
class RemoteObject:
    key: str  # relative to the prefix
    size: int
    etag: str  # without quotes


def _headers(kind: Kind, policy: Policy, media_type: str | None) -> tuple[str, str]:
    """(Content-Type, Cache-Control) from the route table."""
    headers = dict(headers_for(kind, policy=policy, media_type=media_type))
    # the table leaves the ping's caching open; publish it like the other mutable documents
    return headers["Content-Type"], headers.get(
        "Cache-Control", short_cache(policy.tag_cache_seconds)
    )


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def collect_objects(
    layout: Layout, policy: Policy, console: Console | None = None
) -> list[LocalObject]:
    """Walk `v2/` (plus the browse page `index.html` at the root) and describe every
    object to upload (sorted by phase, key).

    A manifest is published once, under its exact name, with the type its typed twin
    carries; the twins themselves, the content store, host configs and anything that is no
    registry path stay local. The ping file is published as `v2/` (what `GET /v2/`
    reads) and as `v2/index` (the index document of S3 website endpoints).
    Raises TreeError for a manifest without a (matching) twin.
    """
    result: list[LocalObject] = []
    manifests: dict[str, os.stat_result] = {}  # exact manifest rel → stat
    twins: dict[str, list[tuple[str, str, os.stat_result]]] = {}  # exact rel → (twin rel, type, st)
    if not layout.v2.is_dir():
        raise TreeError(f"{layout.v2}: no tree to publish", hint="run `registrish sync` first")
    for dirpath, dirnames, filenames in os.walk(layout.v2):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                continue  # never follow symlinks out of the tree
            rel = path.relative_to(layout.root).as_posix()
            twin = split_twin(filename)
            if twin is not None:
                exact = rel[: -len(filename)] + twin[0]
                twins.setdefault(exact, []).append((rel, twin[1], st))
                continue
            if rel == Layout.rel_ping():
                ctype, cache = _headers(Kind.PING, policy, None)
                md5 = _md5_file(path)
                for key in (PING_KEY, rel):
                    result.append(
                        LocalObject(Phase.PING, key, rel, st.st_size, ctype, cache, md5=md5)
                    )
                continue
            target = classify(rel)
            if isinstance(target, Miss):
                if console is not None:
                    console.debug(f"publish: skipping {rel} (not a registry path)")
                continue
            if target.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
                manifests[rel] = st
                continue
            if target.kind not in _PHASE_OF_KIND:
                continue  # a route publish does not know yet: never guess its type
            result.append(_describe(target, rel, path, st.st_size, policy, None))
    browse = layout.path(BROWSE_REL)
    if browse.is_file() and not browse.is_symlink():
        target = classify(BROWSE_REL)
        assert isinstance(target, Target)
        result.append(_describe(target, BROWSE_REL, browse, browse.stat().st_size, policy, None))
    for rel, st in manifests.items():
        target = classify(rel)
        assert isinstance(target, Target)
        # a crash between sync's renames may leave an old twin: the one sharing the exact
        # file's inode (or bytes) is the current one
        path = layout.path(rel)
        candidates = twins.get(rel, [])
        types = {
            media_type
            for twin_rel, media_type, tst in candidates
            if (tst.st_dev, tst.st_ino) == (st.st_dev, st.st_ino)
            or layout.path(twin_rel).read_bytes() == path.read_bytes()
        }
        if len(types) != 1:
            problem = "has no typed twin" if not types else "has twins of several types"
            raise TreeError(
                f"{path}: manifest {problem}, so its Content-Type is unknown",
                hint="run `registrish sync --verify` to repair the tree",
            )
        result.append(_describe(target, rel, path, st.st_size, policy, types.pop()))
    return sorted(result)


def _describe(
    target: Target, rel: str, path: Path, size: int, policy: Policy, media_type: str | None
) -> LocalObject:
    ctype, cache = _headers(target.kind, policy, media_type)
    phase = _PHASE_OF_KIND[target.kind]
    if target.kind in (Kind.BLOB, Kind.MANIFEST_DIGEST):
        return LocalObject(phase, rel, rel, size, ctype, cache, digest=target.ref)
    return LocalObject(phase, rel, rel, size, ctype, cache, md5=_md5_file(path))


# --- the plan (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    obj: LocalObject
    reason: str  # "new", "changed" or "forced"


def _delete_rank(key: str) -> int:
    """Where a remote key goes in the delete order: tags and lists before manifests
    before blobs; unknown keys (not ours) last."""
    if key == PING_KEY or key == f"v2/{PING_FILE}":
        return len(Phase) - 1 - Phase.PING
    target = classify(key)
    if isinstance(target, Miss) or target.kind not in _PHASE_OF_KIND:
        return len(Phase)
    return len(Phase) - 1 - _PHASE_OF_KIND[target.kind]


@dataclass(frozen=True)
class PublishPlan:
    uploads: tuple[Upload, ...]  # in upload order
    deletes: tuple[RemoteObject, ...]  # in delete order (empty without --delete)
    #: Remote objects the tree does not have, kept because --delete was not given.
    extra: tuple[RemoteObject, ...]
    unchanged: int
    unchanged_bytes: int

    @property
    def pending(self) -> bool:
        return bool(self.uploads or self.deletes)

    @property
    def upload_bytes(self) -> int:
        return sum(u.obj.size for u in self.uploads)

    @property
    def delete_bytes(self) -> int:
        return sum(d.size for d in self.deletes)

    def phases(self) -> list[tuple[Phase, list[Upload]]]:
        grouped: dict[Phase, list[Upload]] = {}
        for u in self.uploads:
            grouped.setdefault(u.obj.phase, []).append(u)
        return sorted(grouped.items())

    def describe(self, target: S3Target) -> list[str]:
        """What `--dry-run` prints, in execution order."""
        lines = [
            f"Would upload {len(self.uploads)} objects ({human_bytes(self.upload_bytes)}) "
            f"to {target}; {self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)})"
        ]
        for phase, uploads in self.phases():
            size = sum(u.obj.size for u in uploads)
            lines.append(f"  {phase.name.lower()}: {len(uploads)} ({human_bytes(size)})")
            lines += [
                f"    would upload {u.obj.key} ({human_bytes(u.obj.size)}, {u.reason}, "
                f"{u.obj.content_type})"
                for u in uploads
            ]
        if self.deletes:
            lines.append(
                f"Would delete {len(self.deletes)} objects ({human_bytes(self.delete_bytes)})"
            )
            lines += [f"    would delete {d.key}" for d in self.deletes]
        elif self.extra:
            lines.append(
                f"{len(self.extra)} objects under the prefix are not in the tree "
                "(kept; --delete removes them)"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "upload": [
                {
                    "key": u.obj.key,
                    "size": u.obj.size,
                    "reason": u.reason,
                    "phase": u.obj.phase.name.lower(),
                    "content_type": u.obj.content_type,
                    "cache_control": u.obj.cache_control,
                }
                for u in self.uploads
            ],
            "upload_bytes": self.upload_bytes,
            "delete": [{"key": d.key, "size": d.size} for d in self.deletes],
            "delete_bytes": self.delete_bytes,
            "extra": len(self.extra),
            "unchanged": self.unchanged,
            "unchanged_bytes": self.unchanged_bytes,
        }


def _same(obj: LocalObject, remote: RemoteObject) -> bool:
    if obj.immutable:
        return remote.size == obj.size
    return remote.etag == obj.md5


def plan_publish(
    local: Iterable[LocalObject],
    remote: Mapping[str, RemoteObject],
    *,
    delete: bool = False,
    force: bool = False,
) -> PublishPlan:
    """Pure diff of the tree's objects against the bucket listing (keys relative to the
    prefix)."""
    uploads: list[Upload] = []
    unchanged = unchanged_bytes = 0
    wanted: set[str] = set()
    for obj in sorted(local):
        wanted.add(obj.key)
        existing = remote.get(obj.key)
        if existing is None:
            uploads.append(Upload(obj, "new"))
        elif force:
            uploads.append(Upload(obj, "forced"))
        elif not _same(obj, existing):
            uploads.append(Upload(obj, "changed"))
        else:
            unchanged += 1
            unchanged_bytes += obj.size
    extra = sorted(
        (r for k, r in remote.items() if k not in wanted),
        key=lambda r: (_delete_rank(r.key), r.key),
    )
    return PublishPlan(
        uploads=tuple(uploads),
        deletes=tuple(extra) if delete else (),
        extra=tuple(extra),
        unchanged=unchanged,
        unchanged_bytes=unchanged_bytes,
    )


# --- the store (I/O seam) -------------------------------------------------------------------


class Store(Protocol):
    """What publish needs from an S3 bucket. Keys here are full keys (prefix included)."""

    def list_objects(self, prefix: str) -> Iterator[RemoteObject]: ...

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, sha256: str
    ) -> None: ...

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        cache_control: str,
        sha256: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None: ...

    def delete(self, keys: Sequence[str]) -> None: ...


def _client_error(exc: Exception, what: str) -> PublishError:
    """A one-line error from a botocore exception (never any credential)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        code, message = err.get("Code", "?"), err.get("Message", "")
        hint = None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            hint = (
                "check the credentials (AWS_PROFILE, --profile) and that they may List/Put/Delete"
            )
        elif code in ("NoSuchBucket", "404"):
            hint = "create the bucket first, or check --endpoint-url and --region"
        return PublishError(f"{what}: {code} {message}".rstrip(), hint=hint)
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return PublishError(
            f"{what}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use --profile with ~/.aws/credentials",
        )
    if name == "ProfileNotFound":
        return PublishError(f"{what}: {exc}", hint="see ~/.aws/config and ~/.aws/credentials")
    return PublishError(f"{what}: {exc}", hint="check --endpoint-url and the network")


class Boto3Store:
    """`Store` over one boto3 S3 client (thread-safe: shared by the upload workers)."""

    def __init__(
        self,
        client: Any,  # botocore's S3 client (untyped)
        bucket: str,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client = client
        self.bucket = bucket
        self._botocore_errors = _botocore_errors()
        # a few part uploads per large blob; the outer pool already runs --jobs objects
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunk,
            max_concurrency=4,
        )

    def list_objects(self, prefix: str) -> Iterator[RemoteObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield RemoteObject(item["Key"], int(item["Size"]), item["ETag"].strip('"'))
        except self._botocore_errors as exc:
            raise _client_error(exc, f"listing s3://{self.bucket}/{prefix}") from None

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, sha256: str
    ) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl=cache_control,
                ContentMD5=md5,  # the store rejects a body damaged in transit
                Metadata={"sha256": sha256},
            )
        except self._botocore_errors as exc:
            raise _client_error(exc, f"uploading s3://{self.bucket}/{key}") from None

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        cache_control: str,
        sha256: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={
                    "ContentType": content_type,
                    "CacheControl": cache_control,
                    "Metadata": {"sha256": sha256},
                },
                Config=self.transfer,
                Callback=on_bytes,
            )
        except self._botocore_errors as exc:
            raise _client_error(exc, f"uploading s3://{self.bucket}/{key}") from None

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except self._botocore_errors as exc:
                raise _client_error(exc, f"deleting from s3://{self.bucket}") from None
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise PublishError(
                    f"deleting s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"{first.get('Message', '')} ({len(errors)} failed)".rstrip()
                )


def _botocore_errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, S3UploadFailedError)


def _validate_endpoint(url: str) -> None:
    """A usage error unless `url` is an http(s) URL with a host (botocore says only
    "Invalid endpoint", and accepts ftp://)."""
    hint = "write it as https://HOST[:PORT], e.g. https://ACCOUNT.r2.cloudflarestorage.com"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise RegistrishError(f"--endpoint-url {url}: not a URL ({exc})", hint=hint) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistrishError(f"--endpoint-url {url}: not an http(s) URL", hint=hint)


def open_store(
    target: S3Target,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    addressing_style: str | None = None,
    jobs: int = DEFAULT_JOBS,
    multipart_threshold: int = MULTIPART_THRESHOLD,
    multipart_chunk: int = MULTIPART_CHUNK,
) -> Boto3Store:
    """A `Boto3Store` using boto3's standard credential chain (environment, shared
    config/credentials files, `profile`, instance roles). Raises MissingExtraError when
    boto3 is not installed."""
    try:
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import ProfileNotFound
    except ModuleNotFoundError:
        raise MissingExtraError(
            "publishing to S3 needs boto3, which is not installed",
            hint="pip install 'registrish[s3]'",
        ) from None
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": 8},
        "max_pool_connections": max(10, jobs * 4),
        "connect_timeout": 10,
        "read_timeout": 120,
    }
    if addressing_style:
        options["s3"] = {"addressing_style": addressing_style}
    if endpoint_url:
        _validate_endpoint(endpoint_url)
        # Third-party stores (R2, Scaleway, MinIO, SeaweedFS) differ in which of boto3's
        # newer default checksums they accept; Content-MD5 on every single PUT still
        # guards small objects, and blobs are verified before they leave.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        client = session.client("s3", endpoint_url=endpoint_url, config=BotoConfig(**options))
    except ProfileNotFound:
        # bad input, not a failing store (exit 2, not 3)
        named = (
            f"--profile {profile}" if profile else f"AWS_PROFILE={os.environ.get('AWS_PROFILE')}"
        )
        raise RegistrishError(
            f"{named}: no such profile in ~/.aws/config or ~/.aws/credentials",
            hint="list them with `aws configure list-profiles`, or "
            + ("drop --profile" if profile else "unset AWS_PROFILE"),
        ) from None
    except ValueError as exc:  # botocore's InvalidRegionError, an endpoint it rejects
        raise RegistrishError(
            f"connecting to {target}: {exc}", hint="check --region and --endpoint-url"
        ) from None
    except Exception as exc:
        raise _client_error(exc, f"connecting to {target}") from None
    return Boto3Store(
        client,
        target.bucket,
        multipart_threshold=multipart_threshold,
        multipart_chunk=multipart_chunk,
    )


# --- execution --------------------------------------------------------------------------------


@dataclass
class PublishStats:
    uploaded: int = 0
    uploaded_bytes: int = 0
    unchanged: int = 0
    unchanged_bytes: int = 0
    deleted: int = 0
    upload_seconds: float = 0.0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_upload(self, size: int) -> None:
        with self._lock:
            self.uploaded += 1
            self.uploaded_bytes += size

    def summary(self) -> str:
        rate = self.uploaded_bytes / self.upload_seconds if self.upload_seconds > 0 else 0.0
        return (
            f"uploaded {self.uploaded} objects ({human_bytes(self.uploaded_bytes)}), "
            f"{self.unchanged} unchanged ({human_bytes(self.unchanged_bytes)}); "
            f"deleted {self.deleted}; {self.seconds:.1f}s ({human_bytes(rate)}/s)"
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "uploaded": self.uploaded,
            "uploaded_bytes": self.uploaded_bytes,
            "unchanged": self.unchanged,
            "unchanged_bytes": self.unchanged_bytes,
            "deleted": self.deleted,
            "seconds": round(self.seconds, 3),
        }


def _verified_file_digest(path: Path, obj: LocalObject) -> str:
    """sha256 of the file; for a digest-addressed object it must be the name's digest."""
    digest, size = hash_file(path)
    if obj.digest is not None and (digest, size) != (obj.digest, obj.size):
        raise IntegrityError(
            f"{path}: {size} bytes hashing to {digest} do not match the name; not uploaded",
            hint="run `registrish sync --verify` to repair the tree, then publish again",
        )
    return digest


def _upload(
    store: Store, target: S3Target, layout: Layout, obj: LocalObject, progress: Progress
) -> None:
    path = layout.path(obj.source)
    key = target.key(obj.key)
    try:
        if obj.size <= SINGLE_PUT_MAX:
            data = path.read_bytes()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if obj.digest is not None and (digest, len(data)) != (obj.digest, obj.size):
                _verified_file_digest(path, obj)  # raises with the full message
            progress.blob_started(key, len(data), obj.key)
            store.put_bytes(
                key,
                data,
                content_type=obj.content_type,
                cache_control=obj.cache_control,
                sha256=digest,
            )
            progress.advance(key, len(data))
        else:
            digest = _verified_file_digest(path, obj)
            progress.blob_started(key, obj.size, obj.key)
            store.put_file(
                key,
                path,
                content_type=obj.content_type,
                cache_control=obj.cache_control,
                sha256=digest,
                on_bytes=lambda n: progress.advance(key, n),
            )
    except FileNotFoundError:
        raise LocalError(
            f"{path}: vanished while publishing", hint="is another process changing the tree?"
        ) from None
    progress.blob_done(key)


def execute_plan(
    plan: PublishPlan,
    *,
    target: S3Target,
    layout: Layout,
    store: Store,
    progress: Progress,
    jobs: int = DEFAULT_JOBS,
    stats: PublishStats | None = None,
) -> PublishStats:
    """Upload phase by phase (parallel within a phase), then delete. The first failure
    stops the run after in-flight uploads end: a rerun plans from the bucket as it is."""
    stats = stats or PublishStats()
    clock = Stopwatch()
    progress.start(blobs=len(plan.uploads), total_bytes=plan.upload_bytes)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="publish") as pool:
            for _phase, uploads in plan.phases():
                futures: dict[Future[None], Upload] = {
                    pool.submit(_upload, store, target, layout, u.obj, progress): u for u in uploads
                }
                done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
                for f in not_done:
                    f.cancel()
                wait(not_done)
                for f in done:
                    if f.exception() is None:
                        stats.count_upload(futures[f].obj.size)
                for f in (*done, *not_done):
                    exc = None if f.cancelled() else f.exception()
                    if exc is not None:
                        raise exc
    finally:
        progress.close()
        stats.upload_seconds = clock.elapsed()
    if plan.deletes:
        # reverse phase order, batch by batch: a tag goes before what it names
        ordered = [target.key(d.key) for d in plan.deletes]
        store.delete(ordered)
        stats.deleted = len(ordered)
    return stats


def list_remote(store: Store, target: S3Target) -> dict[str, RemoteObject]:
    """The bucket's objects under the prefix, keyed relative to it."""
    prefix = target.list_prefix
    result = {}
    for obj in store.list_objects(prefix):
        if not obj.key.startswith(prefix) or obj.key == prefix:
            continue
        rel = obj.key[len(prefix) :]
        result[rel] = RemoteObject(rel, obj.size, obj.etag)
    return result


@dataclass(frozen=True)
class PublishResult:
    plan: PublishPlan
    stats: PublishStats


def publish(
    *,
    layout: Layout,
    target: S3Target,
    store: Store,
    policy: Policy,
    console: Console,
    progress: Progress,
    jobs: int = DEFAULT_JOBS,
    delete: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> PublishResult:
    """Observe, plan and (unless `dry_run`) execute. The caller holds the tree lock."""
    clock = Stopwatch()
    local = collect_objects(layout, policy, console)
    remote = list_remote(store, target)
    plan = plan_publish(local, remote, delete=delete, force=force)
    stats = PublishStats(unchanged=plan.unchanged, unchanged_bytes=plan.unchanged_bytes)
    console.debug(
        f"publish: {len(local)} objects in the tree, {len(remote)} under {target}; "
        f"{len(plan.uploads)} to upload, {len(plan.deletes)} to delete"
    )
    if not dry_run and plan.pending:
        execute_plan(
            plan,
            target=target,
            layout=layout,
            store=store,
            progress=progress,
            jobs=jobs,
            stats=stats,
        )
    stats.seconds = clock.elapsed()
    return PublishResult(plan, stats)


__all__ = [
    "DEFAULT_JOBS",
    "PING_KEY",
    "Boto3Store",
    "LocalObject",
    "MissingExtraError",
    "Phase",
    "PublishError",
    "PublishPlan",
    "PublishResult",
    "PublishStats",
    "RemoteObject",
    "S3Target",
    "Store",
    "TreeError",
    "Upload",
    "collect_objects",
    "execute_plan",
    "list_remote",
    "open_store",
    "parse_s3_url",
    "plan_publish",
    "publish",
]
