"""What a bucket tree holds, for the planner: one paginated listing, cross-checked against
the state object the last writer left (`<prefix>.registrish/state.json.gz`).

The listing alone gives every key's size and ETag, enough for blobs (immutable: key and
size). Manifests and documents must be known by content (the planner compares digests and
bytes): the state object records, for each one sync or gc wrote, its ETag, its bytes and
(for a manifest) the Content-Type it was given. An entry is trusted only while the listing
shows that key with that very ETag, so an object changed or deleted by anyone since is
read again (one GET each) and a stale or lost state object costs requests, never
correctness.

Files a local tree has but a bucket does not need are "virtual" here: typed twins
(`<ref>.~<kind>`: an object carries its own Content-Type) and `tags/<tag>.~last` pages (S3
ignores the `last` query). The state records the pages (ETag None) and the observed state
reports them and every manifest's twin as present, so the one planner plans both trees.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import __version__
from ..oci import mediatypes
from ..oci.manifest import sha256_digest
from ..tree.layout import Layout, parse_rel_path
from ..tree.state import FileInfo, TreeState
from .client import RemoteObject

#: The reserved prefix no registry route starts with (names start with [a-z0-9]).
RESERVED = ".registrish/"
STATE_REL = RESERVED + "state.json.gz"
STATE_FORMAT = 1
#: The key `GET /v2/` reads (S3 serves a key ending in `/` for that URL path).
PING_KEY = "v2/"


@dataclass(frozen=True)
class Entry:
    """A manifest or document the state vouches for."""

    etag: str | None  # None: virtual (never uploaded)
    size: int
    body: bytes
    media_type: str | None = None  # manifests: the Content-Type it was written with


def section_of(rel: str) -> str | None:
    """`manifests`, `blobs`, `referrers`, `tags`, `ping`, `catalog`, or None."""
    if rel == Layout.rel_ping():
        return "ping"
    if rel == Layout.rel_catalog():
        return "catalog"
    parsed = parse_rel_path(rel)
    return parsed[1] if parsed is not None else None


def needs_content(rel: str) -> bool:
    """Whether the planner compares this key's bytes (manifests and documents)."""
    return section_of(rel) in ("manifests", "referrers", "tags", "ping", "catalog")


@dataclass(frozen=True)
class BrowseRecord:
    """The browse page a completed run left: the fingerprint of what it was rendered from
    (`browse.inputs_digest`) and the ETag and size of the page and of each data file."""

    inputs: str
    objects: Mapping[str, tuple[str, int]]


class Recorded(NamedTuple):
    """What a state object holds (all empty for an absent, damaged or foreign one)."""

    entries: dict[str, Entry]
    configs: dict[str, str]
    browse: BrowseRecord | None


def encode(
    entries: Mapping[str, Entry],
    configs: Mapping[str, str] | None = None,
    browse: BrowseRecord | None = None,
) -> bytes:
    """The state object: `entries`, plus `configs` (image config digest → the facts the
    browse page reads from it, `browse.config_facts`) so a run that renders the page reads
    no config, and `browse` so a no-op whose page inputs did not change renders nothing."""
    objects = {}
    for rel, e in sorted(entries.items()):
        try:
            body: dict[str, str] = {"text": e.body.decode()}
        except UnicodeDecodeError:
            body = {"b64": base64.b64encode(e.body).decode()}
        objects[rel] = {"etag": e.etag, "size": e.size, "type": e.media_type, **body}
    doc: dict[str, object] = {"format": STATE_FORMAT, "registrish": __version__, "objects": objects}
    if configs:
        doc["configs"] = dict(sorted(configs.items()))
    if browse is not None:
        doc["browse"] = {"inputs": browse.inputs, "objects": dict(sorted(browse.objects.items()))}
    return gzip.compress(json.dumps(doc, sort_keys=True).encode(), mtime=0)


def decode(data: bytes | None) -> dict[str, Entry]:
    """The entries of a state object; {} for an absent, damaged or foreign one."""
    return read_state(data).entries


def read_state(data: bytes | None) -> Recorded:
    """What a state object holds (configs {} and browse None for one written before they
    were recorded, or whose record of them is malformed)."""
    if not data:
        return Recorded({}, {}, None)
    try:
        doc = json.loads(gzip.decompress(data))
        if doc.get("format") != STATE_FORMAT:
            return Recorded({}, {}, None)
        entries = {}
        for rel, o in doc["objects"].items():
            body = o["text"].encode() if "text" in o else base64.b64decode(o["b64"])
            entries[rel] = Entry(o["etag"], int(o["size"]), body, o.get("type"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return Recorded({}, {}, None)
    configs = doc.get("configs", {})
    if not isinstance(configs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in configs.items()
    ):
        configs = {}
    return Recorded(entries, dict(configs), _browse_record(doc.get("browse")))


def _browse_record(doc: object) -> BrowseRecord | None:
    """The browse record as written by `encode`; None for anything else (rendered again)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), str):
        return None
    objects = doc.get("objects")
    if not isinstance(objects, dict):
        return None
    kept: dict[str, tuple[str, int]] = {}
    for rel, pair in objects.items():
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], int)
        ):
            return None
        kept[rel] = (pair[0], pair[1])
    return BrowseRecord(doc["inputs"], kept)


@dataclass
class Observed:
    """A bucket's `TreeState`, with what the store needs to keep writing it."""

    state: TreeState
    #: The entries still true (trusted or re-read), which the next state object carries.
    entries: dict[str, Entry] = field(default_factory=dict)
    #: digest → a key holding that blob (the source of server-side copies).
    blob_keys: dict[str, str] = field(default_factory=dict)
    #: Manifests and documents read again because the state did not vouch for them.
    reread: int = 0


def observe(
    listed: Mapping[str, RemoteObject],
    recorded: Mapping[str, Entry],
    read: Callable[[str], tuple[bytes, str | None]],
) -> Observed:
    """The tree the listing shows (keys relative to the prefix), with content from the
    state where it still holds and from `read(rel)` → (bytes, Content-Type) elsewhere."""
    files: dict[str, FileInfo] = {}
    manifest_digests: dict[str, str] = {}
    manifest_bytes: dict[str, bytes] = {}
    docs: dict[str, bytes] = {}
    store: dict[str, FileInfo] = {}
    out = Observed(TreeState())
    # A unique "inode" per key: objects share no storage (gc's freed-bytes arithmetic).
    for ino, (rel, obj) in enumerate(sorted(listed.items()), start=1):
        if not rel.startswith("v2/") or rel == PING_KEY:
            continue
        info = FileInfo(obj.size, 0, ino)
        files[rel] = info
        section = section_of(rel)
        if section == "blobs":
            digest = rel.rsplit("/", 1)[1]
            if digest not in store:
                store[digest] = info
                out.blob_keys[digest] = rel
            continue
        if not needs_content(rel):
            continue
        entry = recorded.get(rel)
        if entry is None or entry.etag != obj.etag or entry.size != obj.size:
            body, media_type = read(rel)
            entry = Entry(obj.etag, len(body), body, media_type)
            out.reread += 1
        out.entries[rel] = entry
        if section == "manifests":
            digest = sha256_digest(entry.body)
            manifest_digests[rel] = digest
            manifest_bytes.setdefault(digest, entry.body)
            if entry.media_type in mediatypes.KIND_OF:
                name, _, ref = rel.removeprefix("v2/").rpartition("/manifests/")
                twin = Layout.rel_manifest_twin(name, ref, entry.media_type)
                manifest_digests[twin] = digest
        elif rel != Layout.rel_ping() or PING_KEY in listed:
            docs[rel] = entry.body  # a ping missing its `v2/` key is rewritten
    for n, (rel, entry) in enumerate(sorted(recorded.items()), start=1):
        if entry.etag is None and rel not in files:  # virtual `last` pages
            files[rel] = FileInfo(entry.size, 0, -n)
            docs[rel] = entry.body
            out.entries[rel] = entry
    out.state = TreeState(
        files=files,
        manifest_digests=manifest_digests,
        manifest_bytes=manifest_bytes,
        docs=docs,
        store=store,
    )
    return out
