"""A blob streamed from the upstream straight into a bucket, verified before it is visible.

`BucketSink` has the public surface of `upstream.sink.HashingSink` (`write`, `copy_from`,
`restart`, `written`, `size`, `what`, `digest`, `finish`, `discard`, `close`, an `on_bytes`
progress callback, no byte past the declared size), so the download code writes into either.
Bytes are hashed as they arrive and buffered a part at a time:

- an object no larger than one part is sent in one `PutObject` only after its size and
  digest verify;
- a larger one goes up as a multipart upload: each full part is sent as soon as the next
  byte arrives, the last part only after verification, then `CompleteMultipartUpload`. An
  upload is invisible until completed, so an unverified blob never appears at its key; on a
  mismatch the upload is aborted and `IntegrityError` raised.

No `Content-MD5`: without a checksum header botocore signs each body's SHA-256 (over HTTP
and HTTPS alike), which S3 checks, so a part damaged in transit is still refused;
an MD5 of every byte on top cost 1.5 s of CPU per GiB (BENCHMARKS.md, "Bucket trees").

Memory. Alone, a sink holds one buffer of `part_size` bytes (5 MiB by default; a blob over
10,000 × 5 MiB ≈ 49 GiB gets `ceil(size / 10,000)` rounded up to a MiB), reused for every
part, and sends each part itself. The sinks of one sync share a `PartBuffers` instead:
at most `count` part buffers in all, allocated once and reused, and the threads that send
full parts while their sink fills the next buffer. Memory is then `count × part_size`
however many blobs stream (plus objects of at most `SMALL` bytes, buffered on their own);
a big blob streaming alone has up to `count` parts on their way at once.

`abort_stale_uploads` aborts the unfinished uploads a killed run left (the next writer calls
it once it holds the bucket's lease: without the lease it could abort a live writer's upload).
Every S3 failure becomes a one-line `PublishError` (exit 3) naming the key, never a credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
#: S3's smallest part: more parts in flight for the same memory (a 500 Mbit/s link stayed
#: busier with 6 × 5 MiB than with 4 × 8 MiB; BENCHMARKS.md, "Bucket trees").
DEFAULT_PART_SIZE = MIN_PART
#: The part buffers a sync's blobs share (`PartBuffers`): 30 MiB in all keeps the realistic
#: set's peak RSS under 150 MiB (8 × 8 MiB passed it).
PART_BUFFERS = 6
#: Objects up to this size get a buffer of their own, never one of the shared part buffers
#: (a config must not wait for a part buffer a big layer holds).
SMALL = 1 * MiB
_CHUNK = 1024 * 1024


def part_size_for(size: int, minimum: int = DEFAULT_PART_SIZE) -> int:
    """The part size for a `size`-byte object: `minimum` (never below S3's 5 MiB) unless
    10,000 parts of it cannot hold `size`; then the smallest whole number of MiB that can."""
    if minimum < MIN_PART:
        raise ValueError(f"part size {minimum} is below S3's minimum of {MIN_PART}")
    needed = -(-size // MAX_PARTS)
    return max(minimum, -(-needed // MiB) * MiB)


class PartBuffers:
    """The part buffers the sinks of one run share, and the threads that send full parts.

    At most `count` buffers of `size` bytes exist, each allocated once and reused (freed
    blocks of several MiB stay in the threads' malloc arenas: the peak RSS grew past the
    buffers' sum). A sink takes one when its bytes arrive and hands a full one to `send`,
    which gives it back once the part is in the store; with every buffer taken, a sink
    waits for one (backpressure: the upstream read pauses). `close` after the last sink."""

    def __init__(self, count: int, size: int = DEFAULT_PART_SIZE) -> None:
        self.count, self.size = max(1, count), size
        self._free: list[bytearray] = []
        self._made = 0
        self._ready = threading.Condition()
        self._senders = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="part")

    def take(self) -> bytearray:
        with self._ready:
            while not self._free and self._made >= self.count:
                self._ready.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        return bytearray(self.size)

    @property
    def allocated(self) -> int:
        """How many buffers exist (never more than `count`)."""
        return self._made

    @property
    def idle(self) -> int:
        """How many of them no sink or part holds."""
        with self._ready:
            return len(self._free)

    def give(self, buffer: bytearray) -> None:
        with self._ready:
            self._free.append(buffer)
            self._ready.notify()

    def send(self, work: Callable[[], str], buffer: bytearray) -> Future[str]:
        """Run `work` (a part's upload) on a sender thread; `buffer` is given back after."""

        def run() -> str:
            try:
                return work()
            finally:
                self.give(buffer)

        return self._senders.submit(run)

    def close(self) -> None:
        self._senders.shutdown(wait=True)
        self._free.clear()


class _View:
    """The first `n` bytes of a buffer as a read-only file: botocore takes a body as
    bytes, bytearray or a file, and a slice of the buffer would be a copy."""

    def __init__(self, buffer: bytearray, n: int) -> None:
        self._view = memoryview(buffer)[:n]
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view) - self._pos

    def read(self, n: int | None = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


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
        parts: PartBuffers | None = None,
    ) -> None:
        if size > MAX_OBJECT:
            raise RegistrishError(f"{what}: {size} bytes is more than S3's 5 TiB object limit")
        self.client, self.bucket, self.key = client, bucket, key
        self.size, self.what, self.expected = size, what, digest
        self.part_size = part_size_for(
            size, part_size or (parts.size if parts else 0) or DEFAULT_PART_SIZE
        )
        # the shared buffers when they are of this blob's part size (a blob over ~49 GiB
        # needs bigger parts) and the blob is not small
        self._parts = parts if parts and parts.size == self.part_size and size > SMALL else None
        self._on_bytes = on_bytes or (lambda _n: None)
        self._extra: dict[str, Any] = {
            "ContentType": content_type,
            "CacheControl": cache_control,
            "Metadata": dict(metadata) if metadata is not None else {"sha256": digest},
        }
        self._errors = botocore_errors()
        # Alone: allocated once, reused for every part. Shared: taken when bytes arrive.
        self._own = bytearray(min(size, self.part_size)) if self._parts is None else None
        self._buffer: bytearray | None = self._own
        self._fill = 0
        self._upload_id: str | None = None
        self._sent: list[Future[str]] = []  # the parts, in order: each gives its ETag
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
            if self._fill == self._room():  # full and more to come: send it as a part
                self._send_part()
            buffer = self._buffer = self._buffer if self._buffer is not None else self._take()
            n = min(len(view), self._room() - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
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
                parts = [
                    {"PartNumber": number, "ETag": sent.result()}
                    for number, sent in enumerate(self._sent, start=1)
                ]
                answer = self._call(
                    "complete_multipart_upload",
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
                etag = str(answer.get("ETag", ""))
                self._upload_id, self._sent = None, []
        except BaseException:
            self.discard()
            raise
        self._done = True
        self._own = self._buffer = None
        self.uploaded = UploadedObject(self.key, self.expected, self.size, etag.strip('"'))

    commit = finish

    def discard(self) -> None:
        """Abort the upload (nothing becomes visible). S3 errors are not raised: a leftover
        upload is aborted by the next run's `abort_stale_uploads`."""
        with contextlib.suppress(RegistrishError):
            self._abort()
        self._done = True
        self._own = self._buffer = None

    def close(self) -> None:
        if not self._done:
            self.discard()

    # -- buffers ----------------------------------------------------------------------------
    def _room(self) -> int:
        """How many bytes the current part holds."""
        return len(self._own) if self._own is not None else self.part_size

    def _take(self) -> bytearray:
        assert self._parts is not None, "a sink alone keeps its own buffer"
        for sent in self._sent:  # a part that failed fails the blob now, not at the end
            if sent.done() and sent.exception() is not None:
                sent.result()
        return self._parts.take()

    def _release(self) -> None:
        """Give back a shared buffer not handed to a part."""
        buffer, self._buffer = self._buffer, self._own
        if buffer is not None and buffer is not self._own and self._parts is not None:
            self._parts.give(buffer)

    # -- S3 calls --------------------------------------------------------------------------
    def _put_whole(self) -> str:
        body = _View(self._buffer, self._fill) if self._buffer is not None else b""
        try:
            answer = self._call("put_object", Body=body, **self._extra)
        finally:
            self._release()
        return str(answer.get("ETag", ""))

    def _send_part(self) -> None:
        if self._upload_id is None:
            answer = self._call("create_multipart_upload", **self._extra)
            self._upload_id = str(answer["UploadId"])
        buffer, fill = self._buffer, self._fill
        assert buffer is not None, "a part of at least one byte"
        number, upload_id = len(self._sent) + 1, self._upload_id

        def upload() -> str:
            # a full buffer goes as it is (no copy anywhere); a last, shorter part as a view
            body = buffer if fill == len(buffer) else _View(buffer, fill)
            answer = self._call(
                "upload_part",
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
            return str(answer["ETag"])

        self._fill = 0
        if self._parts is None or buffer is self._own:  # alone: sent here, buffer reused
            done: Future[str] = Future()
            done.set_result(upload())
            self._sent.append(done)
            return
        self._buffer = None  # the sender gives it back once the part is in the store
        self._sent.append(self._parts.send(upload, buffer))

    def _abort(self) -> None:
        upload_id, sent = self._upload_id, self._sent
        self._upload_id, self._sent = None, []
        wait(sent)  # a part still on its way would land after the abort
        self._release()
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
