"""Where a bucket tree lives: `s3://BUCKET[/PREFIX]` (the `[registry] root` of a bucket
tree, and `publish`'s target)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RegistrishError

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
