"""The browse page in a bucket tree: `index.html` and its `browse/<sha256>.json` data
files, the bytes a local sync writes (`browse_page.render_site`) with the Content-Type and
Cache-Control publish gives them (`routes.object_headers`).

The page's facts come from the lock, the bucket's manifests (whose bytes the state object
holds) and, for a single-image tag, its image config's platform. Configs are blobs, so the
state object keeps the few fields the page reads from each (`config_facts`): a no-op
renders the page without a request and compares it with the listing. A data file is named
by its content (listed with its size: current); the page is current when its ETag is the
MD5 of its bytes, as publish decides (a store whose ETags are no MD5 gets it rewritten on
every run). Only a config the state object does not know is read: one small GET each.

Written after everything else, in publish's order: the data files the page names, then the
page, then the data files no page names any more are deleted (a puller never gets a page
naming a missing file); the state object last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import IntegrityError
from ..lock.lockfile import Lock
from ..oci import mediatypes
from ..oci.manifest import Manifest, parse_manifest
from ..serving.browse import IMAGE_CONFIG_TYPES, MAX_CONFIG_BYTES, model_from
from ..serving.browse_page import BrowseSite, render_site
from ..serving.routes import BROWSE_REL, Kind, Target, classify
from .client import RemoteObject

#: The fields of an image config the page reads (`browse.tag_facts`: its platform).
_FACT_KEYS = ("architecture", "os", "variant")


def config_facts(data: bytes) -> str:
    """What the page needs of an image config, as a JSON document that gives the page the
    same facts as the whole config ("{}" for one that is no JSON object)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "{}"
    if not isinstance(doc, dict):
        return "{}"
    kept = {k: doc[k] for k in _FACT_KEYS if k in doc}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ConfigRef:
    """An image config the page reads: where a repository of the lock keeps it."""

    digest: str
    name: str
    size: int


def _image(data: bytes | None, digest: str) -> Manifest | None:
    if data is None:
        return None
    try:
        return parse_manifest(data, expected_digest=digest)
    except IntegrityError:  # damaged: the page shows less, as for a local tree
        return None


def wanted_configs(
    lock: Lock, manifests: Mapping[str, bytes], parsed: dict[str, Manifest | None] | None = None
) -> dict[str, ConfigRef]:
    """The image configs of the lock's single-image tags whose manifests `manifests`
    (digest → bytes) holds, no larger than the page reads (`browse.read_model`).
    `parsed`: digest → parsed manifest, filled in (`render` reuses it)."""
    wanted: dict[str, ConfigRef] = {}
    memo: dict[str, Manifest | None] = {} if parsed is None else parsed
    for tag in lock.tags:
        if mediatypes.is_index(tag.media_type) or tag.digest in memo:
            continue
        image = memo[tag.digest] = _image(manifests.get(tag.digest), tag.digest)
        config = image.config if image is not None else None
        if (
            config is not None
            and config.media_type in IMAGE_CONFIG_TYPES
            and config.size <= MAX_CONFIG_BYTES
        ):
            wanted.setdefault(config.digest, ConfigRef(config.digest, tag.name, config.size))
    return wanted


def render(
    lock: Lock,
    manifests: Mapping[str, bytes],
    configs: Mapping[str, str],
    parsed: dict[str, Manifest | None] | None = None,
) -> BrowseSite:
    """The page and every data file, from the lock, the manifests (digest → bytes) and the
    configs' facts (digest → `config_facts`); `parsed` as `wanted_configs` filled it."""
    facts = {digest: text.encode() for digest, text in configs.items()}
    return render_site(model_from(lock, manifests, facts, parsed))


@dataclass(frozen=True)
class BrowseWrites:
    """What the bucket lacks of a rendered page: data files to upload (rel → bytes), the
    page when it changed, and the data files no page names any more."""

    data: Mapping[str, bytes]
    page: bytes | None
    stale: tuple[str, ...]

    @property
    def pending(self) -> bool:
        return bool(self.data or self.page is not None or self.stale)


def _is_data_file(rel: str) -> bool:
    target = classify(rel)
    return isinstance(target, Target) and target.kind is Kind.BROWSE_DATA


def browse_writes(site: BrowseSite, listed: Mapping[str, RemoteObject]) -> BrowseWrites:
    """Pure diff of `site` against the bucket's listing (keys relative to the prefix)."""
    data = {
        rel: body
        for rel, body in site.data.items()
        if rel not in listed or listed[rel].size != len(body)
    }
    now = listed.get(BROWSE_REL)
    md5 = hashlib.md5(site.page, usedforsecurity=False).hexdigest()
    current = now is not None and now.etag == md5 and now.size == len(site.page)
    stale = sorted(rel for rel in listed if rel not in site.data and _is_data_file(rel))
    return BrowseWrites(data, None if current else site.page, tuple(stale))
