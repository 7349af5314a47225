"""A blob streamed from the upstream straight into a bucket, verified before it is visible.

`BucketSink` has the public surface of `upstream.sink.HashingSink` (`write`, `copy_from`,
`restart`, `written`, `size`, `what`, `digest`, `finish`, `discard`, `close`, an `on_bytes`
progress callback, no byte past the declared size), so the download code writes into either.
Bytes are hashed as they arrive and buffered in ONE part-sized buffer per sink:

- an object no larger than one part (`min(size, part_size)` bytes of memory) is sent in one
  `PutObject` only after its size and digest verify;
- a larger one goes up as a multipart upload: each full part is sent as soon as the next
  byte arrives, the last part only after verification, then `CompleteMultipartUpload`. An
  upload is invisible until completed, so an unverified blob never appears at its key; on a
  mismatch the upload is aborted and `IntegrityError` raised.

Memory: one buffer of `part_size` bytes per sink (8 MiB by default; a blob over
10,000 × 8 MiB ≈ 78 GiB gets `ceil(size / 10,000)` rounded up to a MiB), reused for every
part — with sync's default 8 jobs, at most 64 MiB of part buffers.

`abort_stale_uploads` aborts the unfinished uploads a killed run left (the next writer calls
it once it holds the bucket's lease: without the lease it could abort a live writer's upload).
Every S3 failure becomes a one-line `PublishError` (exit 3) naming the key, never a credential.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import IntegrityError, RegistrishError
from ..upstream.sink import Readable
from ._s3 import botocore_errors, client_error, error_code

MiB = 1024 * 1024
#: S3's smallest part (all but the last) and its largest part count.
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024 * 1024 * MiB  # 5 TiB
DEFAULT_PART_SIZE = 8 * MiB
_CHUNK = 1024 * 1024


def part_size_for(size: int, minimum: int = DEFAULT_PART_SIZE) -> int:
    """The part size for a `size`-byte object: `minimum` (never below S3's 5 MiB) unless
    10,000 parts of it cannot hold `size`; then the smallest whole number of MiB that can."""
    if minimum < MIN_PART:
        raise ValueError(f"part size {minimum} is below S3's minimum of {MIN_PART}")
    needed = -(-size // MAX_PARTS)
    return max(minimum, -(-needed // MiB) * MiB)


@dataclass(frozen=True)
class UploadedObject:
    """What `BucketSink.finish` made visible (`BucketSink.uploaded`): the key, its verified
    digest and size, the store's ETag (quotes stripped)."""

    key: str
    digest: str
    size: int
    etag: str


class BucketSink:
    """The bucket key a blob streams into: hashed as it grows, never past `size`, visible
    only after `finish` verified `size` and `digest`. Use it from one thread; `close` (in a
    `finally`) aborts whatever was not finished."""

    def __init__(
        self,
        client: Any,  # botocore's S3 client (untyped)
        bucket: str,
        key: str,
        *,
        digest: str,
        size: int,
        content_type: str,
        cache_control: str,
        what: str,
        on_bytes: Callable[[int], None] | None = None,
        metadata: Mapping[str, str] | None = None,
        part_size: int | None = None,
    ) -> None:
        if size > MAX_OBJECT:
            raise RegistrishError(f"{what}: {size} bytes is more than S3's 5 TiB object limit")
        self.client, self.bucket, self.key = client, bucket, key
        self.size, self.what, self.expected = size, what, digest
        self.part_size = part_size_for(size, part_size or DEFAULT_PART_SIZE)
        self._on_bytes = on_bytes or (lambda _n: None)
        self._extra: dict[str, Any] = {
            "ContentType": content_type,
            "CacheControl": cache_control,
            "Metadata": dict(metadata) if metadata is not None else {"sha256": digest},
        }
        self._errors = botocore_errors()
        # Allocated once, reused for every part: the sink's whole memory.
        self._buffer = bytearray(min(size, self.part_size))
        self._fill = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False
        self.hasher = hashlib.sha256()
        self.written = 0
        #: set by `finish`: what became visible
        self.uploaded: UploadedObject | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def digest(self) -> str:
        """The digest of the bytes written so far."""
        return "sha256:" + self.hasher.hexdigest()

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise RegistrishError(f"{self.what}: write after the upload was finished or discarded")
        if self.written + len(chunk) > self.size:
            raise IntegrityError(
                f"{self.what}: the registry sent more than the declared {self.size} bytes",
                hint="the manifest and the registry disagree; report it to the image's publisher",
            )
        self.hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            if self._fill == len(self._buffer):  # full and more to come: send it as a part
                self._send_part()
            n = min(len(view), len(self._buffer) - self._fill)
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
        self.written += len(chunk)
        self._on_bytes(len(chunk))

    def copy_from(
        self,
        src: Readable,
        limit: int | None = None,
        *,
        report: bool = True,  # noqa: ARG002 - HashingSink's signature; every byte is reported here
    ) -> None:
        """Write `src` up to `limit` bytes in all (`size` by default); never reads past it."""
        end = self.size if limit is None else limit
        while self.written < end:
            chunk = src.read(min(_CHUNK, end - self.written))
            if not chunk:
                break
            self.write(chunk)

    def restart(self) -> None:
        """Start over (the registry ignored our Range, or answered another one): the
        multipart upload begun so far is aborted."""
        self._abort()
        self._done = False
        self._fill = 0
        self.hasher = hashlib.sha256()
        if self.written:
            self._on_bytes(-self.written)
        self.written = 0

    def finish(self) -> None:
        """Verify size and digest, then make the object visible at its key (the single PUT,
        or the last part and CompleteMultipartUpload). On a mismatch nothing becomes
        visible: the upload is aborted and IntegrityError raised."""
        if self._done:
            raise RegistrishError(f"{self.what}: finish after the upload was finished or discarded")
        if self.written != self.size or self.digest != self.expected:
            self.discard()
            raise IntegrityError(
                f"{self.what}: {self.written} bytes hashing to {self.digest}, expected "
                f"{self.size} bytes with digest {self.expected}; nothing written to {self.url}",
                hint="the registry or a proxy in between serves wrong content",
            )
        try:
            if self._upload_id is None:
                etag = self._put_whole()
            else:
                self._send_part()
                answer = self._call(
                    "complete_multipart_upload",
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                etag = str(answer.get("ETag", ""))
                self._upload_id = None
        except BaseException:
            self.discard()
            raise
        self._done = True
        self._buffer = bytearray()
        self.uploaded = UploadedObject(self.key, self.expected, self.size, etag.strip('"'))

    commit = finish

    def discard(self) -> None:
        """Abort the upload (nothing becomes visible). S3 errors are not raised: a leftover
        upload is aborted by the next run's `abort_stale_uploads`."""
        with contextlib.suppress(RegistrishError):
            self._abort()
        self._done = True
        self._buffer = bytearray()

    def close(self) -> None:
        if not self._done:
            self.discard()

    # -- S3 calls --------------------------------------------------------------------------
    def _put_whole(self) -> str:
        body = self._buffer
        del body[self._fill :]
        answer = self._call("put_object", Body=body, ContentMD5=_md5(body), **self._extra)
        return str(answer.get("ETag", ""))

    def _send_part(self) -> None:
        if self._upload_id is None:
            answer = self._call("create_multipart_upload", **self._extra)
            self._upload_id = str(answer["UploadId"])
        body = self._buffer
        if self._fill < len(body):  # the last part: shrink in place, no copy
            del body[self._fill :]
        number = len(self._parts) + 1
        answer = self._call(
            "upload_part",
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
            ContentMD5=_md5(body),  # the store rejects a part damaged in transit
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._fill = 0

    def _abort(self) -> None:
        upload_id, self._upload_id, self._parts = self._upload_id, None, []
        if upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except self._errors as exc:
            if error_code(exc) != "NoSuchUpload":  # already aborted (or completed) elsewhere
                raise client_error(exc, f"aborting the upload of {self.url}") from None

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = getattr(self.client, operation)(
                Bucket=self.bucket, Key=self.key, **params
            )
        except self._errors as exc:
            raise client_error(exc, f"uploading {self.url}") from None
        return answer


def _md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def abort_stale_uploads(client: Any, bucket: str, prefix: str, *, older_than: float = 0) -> int:
    """Abort every unfinished multipart upload whose key starts with `prefix` and that was
    initiated more than `older_than` seconds ago (by the store's clock as reported in
    `Initiated`, against ours); returns how many were aborted. With the default 0, call it
    only while holding the bucket's lease: it cannot tell a dead writer's upload from a live
    one's."""
    errors = botocore_errors()
    cutoff = time.time() - older_than
    aborted = 0
    try:
        pages = client.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                if older_than and initiated is not None and initiated.timestamp() > cutoff:
                    continue
                try:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except errors as exc:
                    if error_code(exc) != "NoSuchUpload":
                        raise
                    continue
                aborted += 1
    except errors as exc:
        raise client_error(
            exc, f"aborting unfinished uploads under s3://{bucket}/{prefix}"
        ) from None
    return aborted
