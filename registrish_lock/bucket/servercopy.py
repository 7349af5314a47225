"""A server-side copy inside the bucket: how a blob several repositories share is sent
once and then copied to its other keys, by a bucket sync (`BucketStore.link_blob`) and by
`publish` (`Boto3Store.copy`)."""

from __future__ import annotations

from typing import Any

from ._s3 import botocore_errors, client_error

#: CopyObject's limit; larger objects are copied in parts by s3transfer's managed copy.
COPY_MAX = 5 * 1024**3


def copy_object(
    client: Any,  # botocore's S3 client (untyped)
    bucket: str,
    source: str,
    key: str,
    *,
    content_type: str,
    cache_control: str,
    metadata: dict[str, str] | None = None,
    size: int | None = None,
    what: str | None = None,
) -> None:
    """Copy `source` to `key` (full keys) with these headers; the metadata is replaced,
    never inherited, so the copy carries exactly what an upload would. `metadata` and
    `size` unknown (None): read from the source with one HeadObject. `what` names the
    destination in an error (default: the key)."""
    args: dict[str, Any] = {"ContentType": content_type, "CacheControl": cache_control}
    src = {"Bucket": bucket, "Key": source}
    try:
        if metadata is None or size is None:
            head = client.head_object(**src)
            metadata = head.get("Metadata", {}) if metadata is None else metadata
            size = int(head["ContentLength"])
        args["Metadata"] = metadata
        if size <= COPY_MAX:
            client.copy_object(
                CopySource=src, Bucket=bucket, Key=key, MetadataDirective="REPLACE", **args
            )
        else:  # in parts: what boto3's managed `copy` does, without importing boto3
            from s3transfer.manager import TransferManager  # type: ignore[import-untyped]

            with TransferManager(client) as manager:
                manager.copy(src, bucket, key, extra_args=args).result()
    except botocore_errors() as exc:
        raise client_error(exc, f"copying s3://{bucket}/{source} to {what or key}") from None
