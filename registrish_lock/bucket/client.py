"""The one S3 client layer of the bucket tree and of `publish`: `open_store` (boto3's
standard configuration, retries, registrish's User-Agent; boto3 is the optional extra
`registrish[s3]`, whose botocore is imported lazily) and `Boto3Store` (list, put, a
verified file upload through `upload.BucketSink` and shared part buffers, delete). Errors
never carry a credential."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import USER_AGENT
from ..errors import IntegrityError, RegistrishError
from ._s3 import PublishError as PublishError
from ._s3 import botocore_errors as botocore_errors
from ._s3 import client_error as client_error
from .target import S3Target
from .upload import DEFAULT_PART_SIZE, PART_BUFFERS, BucketSink, PartBuffers

DEFAULT_JOBS = 8
_DELETE_BATCH = 1000  # DeleteObjects' limit


class MissingExtraError(RegistrishError):
    """boto3 is not installed."""


@dataclass(frozen=True)
class RemoteObject:
    key: str  # relative to the prefix
    size: int
    etag: str  # without quotes


class Boto3Store:
    """The bucket over one boto3 S3 client (thread-safe: shared by the upload workers)."""

    def __init__(
        self,
        client: Any,  # botocore's S3 client (untyped)
        bucket: str,
        *,
        part_size: int | None = None,
        part_buffers: int = PART_BUFFERS,
    ) -> None:
        self.client = client
        self.bucket = bucket
        #: `put_file`'s part size (None: `upload.DEFAULT_PART_SIZE`)
        self.part_size = part_size
        self._errors = botocore_errors()
        #: the part buffers every `put_file` shares (made on the first), as a bucket
        #: sync's blobs share theirs: memory bounded whatever the parallel uploads
        self._part_buffers = max(1, part_buffers)
        self._parts: PartBuffers | None = None
        self._parts_lock = threading.Lock()

    def _shared_parts(self) -> PartBuffers:
        with self._parts_lock:
            if self._parts is None:
                size = self.part_size or DEFAULT_PART_SIZE
                self._parts = PartBuffers(self._part_buffers, size)
            return self._parts

    def close(self) -> None:
        """Stop the part senders `put_file` started (after the last upload)."""
        with self._parts_lock:
            parts, self._parts = self._parts, None
        if parts is not None:
            parts.close()

    def list_objects(self, prefix: str) -> Iterator[RemoteObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield RemoteObject(item["Key"], int(item["Size"]), item["ETag"].strip('"'))
        except self._errors as exc:
            raise client_error(exc, f"listing s3://{self.bucket}/{prefix}") from None

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
        except self._errors as exc:
            raise client_error(exc, f"uploading s3://{self.bucket}/{key}") from None

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
        """Stream a local file to `key` through a `BucketSink`: one PutObject up to a part,
        a multipart upload above, and the object visible only if the bytes sent hash to
        `sha256` (else `file_mismatch`, nothing written)."""
        with path.open("rb") as handle:
            sink = BucketSink(
                self.client,
                self.bucket,
                key,
                digest=sha256,
                size=os.fstat(handle.fileno()).st_size,
                content_type=content_type,
                cache_control=cache_control,
                what=str(path),
                on_bytes=on_bytes,
                part_size=self.part_size,
                parts=self._shared_parts(),
            )
            try:
                sink.copy_from(handle)
                sink.finish()
            except IntegrityError:
                raise file_mismatch(path, sink.written, sink.digest) from None
            finally:
                sink.close()

    def copy(
        self,
        source: str,
        key: str,
        *,
        size: int,
        content_type: str,
        cache_control: str,
        sha256: str,
    ) -> None:
        """Copy the complete object `source` to `key` inside the bucket, with the headers
        and `sha256` metadata an upload of the same bytes gets."""
        from .servercopy import copy_object

        copy_object(
            self.client,
            self.bucket,
            source,
            key,
            content_type=content_type,
            cache_control=cache_control,
            metadata={"sha256": sha256},
            size=size,
        )

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except self._errors as exc:
                raise client_error(exc, f"deleting from s3://{self.bucket}") from None
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise PublishError(
                    f"deleting s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"{first.get('Message', '')} ({len(errors)} failed)".rstrip()
                )


def file_mismatch(path: Path, size: int, digest: str) -> IntegrityError:
    """A tree file whose bytes are not the ones its name (or its observation) promised."""
    return IntegrityError(
        f"{path}: {size} bytes hashing to {digest} do not match the name; not uploaded",
        hint="run `registrish sync --verify` to repair the tree, then publish again",
    )


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


def _fast_timestamps(session: Any) -> None:
    """Parse the ISO 8601 timestamps of listings with `datetime.fromisoformat`: botocore's
    general parser (dateutil) was most of a no-op bucket sync's time (5,000 keys: about 2 s
    of CPU). Anything else (HTTP dates in headers) still goes to botocore's own parser."""
    from botocore.utils import parse_timestamp

    def parse(value: str) -> datetime.datetime:
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            return parse_timestamp(value)  # type: ignore[no-any-return]
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)

    factory = session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=parse)


def _s3_data_only(session: Any) -> None:
    """Creating the client, botocore lists the data directories of all of its ~400
    services (twice: 2,500 stat calls, a third of the client's creation) only to check
    that "s3" is one; this session makes S3 clients only, so only S3's are looked at."""
    from botocore.exceptions import DataNotFoundError

    loader = session.get_component("data_loader")

    def available(type_name: str) -> list[str]:
        try:
            loader.list_api_versions("s3", type_name)
        except DataNotFoundError:
            return []
        return ["s3"]

    loader.list_available_services = available


def open_store(
    target: S3Target,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    addressing_style: str | None = None,
    jobs: int = DEFAULT_JOBS,
    part_size: int | None = None,
) -> Boto3Store:
    """A `Boto3Store` using boto3's standard credential chain (environment, shared
    config/credentials files, `profile`, instance roles). Raises MissingExtraError when
    boto3 is not installed."""
    try:
        # botocore's session is boto3's without the resource layer and the s3transfer
        # imports (a tenth of a second of every no-op bucket sync): same configuration,
        # same credential chain
        import botocore.session
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
        # every request registrish makes names it (botocore keeps its own words before it)
        "user_agent_extra": USER_AGENT,
        "read_timeout": 120,
    }
    if addressing_style:
        options["s3"] = {"addressing_style": addressing_style}
    if endpoint_url:
        _validate_endpoint(endpoint_url)
        # Third-party stores (R2, Scaleway, MinIO, SeaweedFS) differ in which of boto3's
        # newer default checksums they accept; Content-MD5 on a one-PUT object, or the
        # signed SHA-256 of a part's body (`upload`), still guards the bytes in transit,
        # and blobs are verified before they are visible.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    try:
        session = botocore.session.Session(profile=profile)
        _fast_timestamps(session)
        _s3_data_only(session)
        client = session.create_client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=BotoConfig(**options)
        )
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
        raise client_error(exc, f"connecting to {target}") from None
    parts = min(max(1, jobs), PART_BUFFERS)
    return Boto3Store(client, target.bucket, part_size=part_size, part_buffers=parts)
