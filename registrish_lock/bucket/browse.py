"""The browse page in a bucket tree: `index.html` and its `browse/<sha256>.json` data
files, the bytes a local sync writes (`browse_page.render_site`) with the Content-Type and
Cache-Control publish gives them (`routes.object_headers`).

The page's facts come from the lock, the bucket's manifests (whose bytes the state object
holds) and, for a single-image tag, its image config's platform. Configs are blobs, so the
state object keeps the few fields the page reads from each (`config_facts`): a no-op
renders the page without a request and compares it with the listing. The page and a data
file are current when the listed ETag is the MD5 of the bytes they should hold, as publish
decides (a store whose ETags are no MD5 gets them rewritten on every run). Only a config the state object does not know is read: one small GET each.

A no-op renders nothing: the state object records the fingerprint of the page's inputs
(`inputs_digest`: the lock's bytes, the manifests' digests, the config facts, the
renderer's sources) with the ETag and size of the page and of every data file it names
(`state.BrowseRecord`). While the fingerprint matches and the listing shows exactly those
objects (no other data file), the bucket holds the page those inputs make; anything else
(a page or data file changed, deleted or added behind the last writer's back, an input
changed) renders it again and rewrites what differs.

Written after everything else, in publish's order: the data files the page names, then the
page, then the data files no page names any more are deleted (a puller never gets a page
naming a missing file); the state object last.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import IntegrityError
from ..lock.lockfile import Lock
from ..oci import mediatypes
from ..oci.manifest import Manifest, parse_manifest
from ..serving.routes import BROWSE_DATA_DIR, BROWSE_REL, Kind, Target, classify
from .client import RemoteObject
from .state import BrowseRecord

if TYPE_CHECKING:  # the renderer is imported only when a page is rendered
    from ..serving.browse_page import BrowseSite

#: The modules whose code decides the page's bytes (`renderer_digest`).
_RENDERER = ("browse.py", "browse_page.py", "browse_assets.py")

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
    from ..serving.browse import IMAGE_CONFIG_TYPES, MAX_CONFIG_BYTES

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
    from ..serving.browse import model_from
    from ..serving.browse_page import render_site

    facts = {digest: text.encode() for digest, text in configs.items()}
    return render_site(model_from(lock, manifests, facts, parsed))


@functools.cache
def renderer_digest() -> str:
    """The renderer's identity: registrish's version and its sources (a changed template
    or script renders again even within one version); the version alone where they
    cannot be read."""
    h = hashlib.sha256(__version__.encode())
    here = Path(__file__).resolve().parent.parent / "serving"
    try:
        for name in _RENDERER:
            h.update((here / name).read_bytes())
    except OSError:
        return __version__
    return h.hexdigest()


def inputs_digest(
    lock_sha256: str, manifest_digests: Iterable[str], configs: Mapping[str, str]
) -> str:
    """The fingerprint of everything `render` reads: the lock (its bytes' sha256), the
    bucket's manifests (their digests: content-addressed), the config facts, the renderer."""
    h = hashlib.sha256(f"{renderer_digest()}\n{lock_sha256}\n".encode())
    for digest in sorted(manifest_digests):
        h.update(digest.encode() + b"\n")
    h.update(json.dumps(sorted(configs.items())).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Rendered:
    """A page rendered in this run, with the inputs it was rendered from (`inputs`: their
    fingerprint): reused by a later plan of the same run whose inputs are the same."""

    inputs: str
    configs: Mapping[str, str]
    site: BrowseSite


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def record_of(inputs: str, site: BrowseSite) -> BrowseRecord:
    """What the bucket holds once `site` is written (ETags: the MD5 a one-PUT object gets)."""
    objects = {rel: (_md5(body), len(body)) for rel, body in site.data.items()}
    objects[BROWSE_REL] = (_md5(site.page), len(site.page))
    return BrowseRecord(inputs, objects)


def _listed_data_files(listed: Mapping[str, RemoteObject]) -> Iterable[str]:
    return (rel for rel in listed if rel.startswith(BROWSE_DATA_DIR + "/") and _is_data_file(rel))


def holds(record: BrowseRecord | None, inputs: str, listed: Mapping[str, RemoteObject]) -> bool:
    """Whether the bucket (its listing) holds the page `inputs` make, as `record` says:
    same fingerprint, the page and every data file with the recorded ETag and size, and
    no other data file."""
    if record is None or record.inputs != inputs:
        return False
    for rel, (etag, size) in record.objects.items():
        now = listed.get(rel)
        if now is None or now.etag != etag or now.size != size:
            return False
    return all(rel in record.objects for rel in _listed_data_files(listed))


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


def _current(listed: Mapping[str, RemoteObject], rel: str, body: bytes) -> bool:
    now = listed.get(rel)
    return now is not None and now.size == len(body) and now.etag == _md5(body)


def browse_writes(site: BrowseSite, listed: Mapping[str, RemoteObject]) -> BrowseWrites:
    """Pure diff of `site` against the bucket's listing (keys relative to the prefix): an
    object is current when its ETag is the MD5 of the bytes it should hold, as publish
    decides (a data file changed behind sync's back keeps its name but not its ETag)."""
    data = {rel: body for rel, body in site.data.items() if not _current(listed, rel, body)}
    page = None if _current(listed, BROWSE_REL, site.page) else site.page
    stale = sorted(rel for rel in _listed_data_files(listed) if rel not in site.data)
    return BrowseWrites(data, page, tuple(stale))
