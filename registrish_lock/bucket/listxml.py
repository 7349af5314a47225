"""A lighter parse of the bucket tree's listings (ListObjectsV2): botocore's generic
model-driven parser spent about 15 ms of CPU per page of 1,000 keys, a quarter of a no-op
sync's listing (BENCHMARKS.md, "Bucket trees"); ElementTree takes a few.

Registered on the `before-parse` event, with botocore's own documented effect: what a
handler puts in `customized_response_dict` is merged into the parsed response. The
handler takes each `<Contents>` as {Key, Size, ETag} (all the tree reads of a listing) and
leaves botocore only the rest of the document to parse (IsTruncated, the continuation
token, EncodingType...); botocore's `after-call` handlers then URL-decode the keys as
usual. Anything else (an error, a body it cannot read) is left whole to botocore."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

_EVENT = "before-parse.s3.ListObjectsV2"


def register(client: Any) -> None:
    """Parse this client's ListObjectsV2 pages lightly (their items carry Key, Size and
    ETag only: no LastModified, StorageClass or Owner)."""
    client.meta.events.register(_EVENT, parse_contents)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # without the S3 namespace


def parse_contents(
    response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: object
) -> None:
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not isinstance(body, bytes):
        return
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return  # botocore's parser reports it
    items: list[dict[str, object]] = []
    stripped = ElementTree.Element(root.tag)
    for child in root:
        if _local(child.tag) != "Contents":
            stripped.append(child)
            continue
        fields = {_local(f.tag): f.text or "" for f in child}
        try:
            items.append(
                {"Key": fields["Key"], "Size": int(fields["Size"]), "ETag": fields["ETag"]}
            )
        except (KeyError, ValueError):
            return  # not what S3 documents: botocore's parser decides
    if items:
        customized_response_dict["Contents"] = items
        response_dict["body"] = ElementTree.tostring(stripped)
