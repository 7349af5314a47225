"""S3 (and R2, MinIO, SeaweedFS): per-object metadata for `registrish publish`.

`s3-metadata.json` maps each object key to `{"ContentType", "CacheControl"}` (and
`"Source"`, the tree file, when the key is an alias like `v2/`). S3 cannot send
Docker-Content-Digest or fall back to a catch-all; missing keys answer 403 unless
anonymous readers may ListBucket.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

from ...tree.layout import Layout
from ..routes import Kind, headers_for
from .base import HostContext, Output, Rendered

FILENAME = "s3-metadata.json"


def metadata(ctx: HostContext) -> dict[str, dict[str, str]]:
    objects: dict[str, dict[str, str]] = {}
    for e in ctx.entries:
        objects[e.path] = {"ContentType": e.content_type, "CacheControl": e.cache_control}
    ping = dict(headers_for(Kind.PING, policy=ctx.policy))
    for alias in ("v2/", "v2"):
        objects[alias] = {
            "ContentType": ping["Content-Type"],
            "CacheControl": ping["Cache-Control"],
            "Source": Layout.rel_ping(),
        }
    return objects


class S3Renderer:
    name = "s3"
    needs_entries = True

    def render(self, ctx: HostContext) -> Rendered:
        doc = {"version": 1, "objects": metadata(ctx)}
        return Rendered((Output(ctx.hosts_dir / FILENAME, functools.partial(_text, doc)),))


def _text(doc: dict[str, object]) -> Iterator[str]:
    """`json.dumps(doc, indent=1, sort_keys=True)` and a newline, a piece at a time (an
    object per file of the tree: never one string)."""
    yield from json.JSONEncoder(indent=1, sort_keys=True).iterencode(doc)
    yield "\n"
