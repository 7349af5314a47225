"""`BucketStore`: the tree-store protocol over an S3-compatible bucket, so `sync` and `gc`
write the bucket directly (no local tree, no local disk for blobs).

- Blobs stream from the upstream into a `BucketSink` (`bucket.upload`): hashed as
  they arrive, completed only once size and digest verify. A blob that several
  repositories share is uploaded once and copied server-side to the other keys.
- Manifests, documents and copies of a phase go out in parallel (`jobs` at a time);
  `flush()` waits for all of them, so `apply`'s order holds across phases: blobs →
  manifests → indexes → referrers → tags → tag lists → catalog → ping.
- Every object gets the Content-Type and Cache-Control `publish` gives it (the route
  table); the ping is the keys `v2/` and `v2/index`, as publish writes it.
- What was written is remembered and saved by `save_state()` as the state object the next
  run cross-checks against its listing (`bucket.state`).
- The browse page goes last (`browse_writes`, `write_browse`; `bucket.browse`).

Requests: observing is one GET (the state object) plus one LIST per 1,000 keys, plus one GET
per manifest or document the state does not vouch for (none after a completed run);
`browse_writes` one GET per image config the state does not know (none after a completed
run), and renders nothing while the state object's browse record holds; `sync --verify`
one GET per blob key, `jobs` at a time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..console import Console
from ..lock.lockfile import Lock
from ..oci.manifest import Manifest, sha256_digest
from ..pool import Turnstile, background, map_parallel
from ..serving.routes import BROWSE_REL, Kind, Miss, Policy, classify, object_headers
from ..tree import gc as gc_mod
from ..tree.layout import Layout, is_last_page, split_twin
from ..tree.state import TreeState
from ..upstream.sink import BlobSink
from . import browse
from . import state as bucket_state
from .client import Boto3Store, RemoteObject
from .servercopy import copy_object
from .target import S3Target
from .upload import PART_BUFFERS, SMALL, BucketSink, PartBuffers

if TYPE_CHECKING:
    from ..tree.plan import BlobFetch
    from ..tree.store import Fetcher

_STATE_TYPE = "application/gzip"
#: gc deletes tags first (no puller is sent to content about to go), blobs last.
_SWEEP_ORDER = {"tag": 0, "tags list": 1, "manifest": 2, "referrers": 3, "blob": 4}


class BucketStore:
    """A bucket tree under `target` (keys `<prefix>/v2/…`). Not thread-safe for observing;
    the writers may be called from `apply`'s fetch workers."""

    has_content_store = False

    def __init__(
        self,
        store: Boto3Store,
        target: S3Target,
        *,
        policy: Policy,
        console: Console,
        jobs: int = 8,
        between_phases: Callable[[], None] | None = None,
        prefetched: Prefetched | None = None,
    ) -> None:
        self.s3, self.client, self.target = store, store.client, target
        #: what the first `observe` reads instead of asking the bucket
        self._prefetched = prefetched
        self.policy, self.console = policy, console
        self._between = between_phases or (lambda: None)
        self._jobs = max(1, jobs)
        self._pool = ThreadPoolExecutor(max_workers=self._jobs, thread_name_prefix="bucket")
        #: the part buffers every blob streams through: 30 MiB in all, whatever -j says
        self._parts = PartBuffers(min(self._jobs, PART_BUFFERS))
        #: Blobs that need part buffers download at most half as many at a time: a GET
        #: waiting for a buffer still fills its socket at the link's rate, so with 8 under
        #: way the ones that could be sent got a quarter of the download (measured over a
        #: shaped link, BENCHMARKS.md "Bucket trees"); the other half goes up meanwhile.
        #: In turn: blobs queued largest first start largest first.
        self._streams = Turnstile(self._parts.count // 2)
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._entries: dict[str, bucket_state.Entry] = {}
        self._blob_keys: dict[str, str] = {}
        #: the last listing (the browse page's keys included), and the config facts
        self._listed: dict[str, RemoteObject] = {}
        self._configs: dict[str, str] = {}
        #: the browse page the state object records, and the one this store rendered
        self._browse: bucket_state.BrowseRecord | None = None
        #: digest → bytes of the manifests observed (None once this run changed one)
        self._manifest_bytes: dict[str, bytes] | None = None
        self.rendered: browse.Rendered | None = None
        self._dirty = False
        self._observed = False
        #: manifests and documents read again while observing (0 after a completed run)
        self.reread = 0

    # -- observing ------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return str(self.target)

    def _key(self, rel: str) -> str:
        return self.target.key(rel)

    def listing(self) -> dict[str, RemoteObject]:
        """Every object under the prefix outside the reserved one, keyed relative to it."""
        return list_tree(self.s3, self.target)

    def _get(self, rel: str) -> tuple[bytes, str | None] | None:
        return get_object(self.s3, self.target, rel)

    def read(self, rel: str) -> bytes | None:
        """The object's bytes; None when absent."""
        got = self._get(rel)
        return got[0] if got is not None else None

    def _read(self, rel: str) -> tuple[bytes, str | None]:
        got = self._get(rel)
        return got if got is not None else (b"", None)

    def observe(self, *, verify: bool = False, names: frozenset[str] | None = None) -> TreeState:
        del names  # one listing reads the whole bucket anyway
        early, self._prefetched = self._prefetched, None
        if self._observed:  # again (`sync --prune`): what this run wrote is known here
            recorded = dict(self._entries)
        else:
            saved = early.state if early else _read_state(self.s3, self.target)
            recorded, self._configs, self._browse = saved
            self._observed = True
        listed = self._listed = early.listing if early else self.listing()
        seen = bucket_state.observe(listed, recorded, self._read)
        self._entries, self._blob_keys = seen.entries, seen.blob_keys
        self._manifest_bytes = dict(seen.state.manifest_bytes)
        self.reread = seen.reread
        self.console.debug(
            f"{self.target}: {len(listed)} objects listed, {len(recorded)} vouched for by the "
            f"state object, {seen.reread} read again"
        )
        self._dirty = self._dirty or seen.reread > 0 or set(recorded) != set(seen.entries)
        if not verify:
            return seen.state
        blobs = [rel for rel in seen.state.files if bucket_state.section_of(rel) == "blobs"]
        damaged = map_parallel(self._blob_is_bad, blobs, self._jobs)
        bad = frozenset(rel for rel, is_bad in zip(blobs, damaged, strict=True) if is_bad)
        # no content store to copy a good one from: a digest with a bad key is fetched again
        refetch = frozenset(rel.rsplit("/", 1)[1] for rel in bad)
        for digest in refetch:
            self._blob_keys.pop(digest, None)
        return replace(seen.state, bad_files=bad, bad_store=refetch, verified=True)

    def _blob_is_bad(self, rel: str) -> bool:
        """`sync --verify`: download a blob key and re-hash it (a key gone since the
        listing is bad too: fetched again)."""
        from ._s3 import botocore_errors, client_error, error_code

        h = hashlib.sha256()
        try:
            answer = self.client.get_object(Bucket=self.target.bucket, Key=self._key(rel))
            for chunk in answer["Body"].iter_chunks(1 << 20):
                h.update(chunk)
        except botocore_errors() as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return True
            raise client_error(
                exc, f"verifying s3://{self.target.bucket}/{self._key(rel)}"
            ) from None
        return "sha256:" + h.hexdigest() != rel.rsplit("/", 1)[1]

    # -- writing --------------------------------------------------------------------------
    def prepare(self) -> None:
        """Nothing to create: a bucket has no directories."""

    def resumable_bytes(self, digest: str) -> int:
        del digest  # an upload never resumes: a killed run's parts are aborted
        return 0

    def place_blob(self, item: BlobFetch, fetch: Fetcher) -> None:
        rel = Layout.rel_blob(item.name, item.digest)
        ctype, cache = object_headers(Kind.BLOB, self.policy, None)

        def opener(
            size: int, on_bytes: Callable[[int], None] | None, what: str, *, resume: bool
        ) -> BlobSink:
            del resume  # see resumable_bytes
            return BucketSink(
                self.client,
                self.target.bucket,
                self._key(rel),
                digest=item.digest,
                size=size,
                content_type=ctype,
                cache_control=cache,
                what=what,
                on_bytes=on_bytes,
                metadata={"sha256": item.digest},  # what publish writes
                parts=self._parts,
            )

        with self._streams if item.size > SMALL else contextlib.nullcontext():
            fetch(opener)
        with self._lock:
            self._blob_keys[item.digest] = rel

    def drop_blob(self, digest: str) -> None:
        with self._lock:
            self._blob_keys.pop(digest, None)

    def link_blob(self, rel: str, digest: str) -> None:
        source = self._blob_keys[digest]
        if source != rel:
            self._submit(lambda: self._copy(source, rel))

    def _copy(self, source: str, rel: str) -> None:
        ctype, cache = object_headers(Kind.BLOB, self.policy, None)
        copy_object(
            self.client,
            self.target.bucket,
            self._key(source),
            self._key(rel),
            content_type=ctype,
            cache_control=cache,
            what=rel,
        )

    def write_manifest(
        self, rel: str, twin_rel: str, data: bytes, stale_twins: Iterable[str] = ()
    ) -> None:
        del stale_twins  # twins are virtual here: the object carries its type
        twin = split_twin(twin_rel.rsplit("/", 1)[1])
        assert twin is not None, twin_rel
        self._put(rel, data, twin[1])

    def write_doc(self, rel: str, data: bytes) -> None:
        if is_last_page(rel):  # S3 ignores `?last=`: remembered, never uploaded
            self._remember(rel, bucket_state.Entry(None, len(data), data))
            return
        if rel == Layout.rel_ping():
            ctype, cache = object_headers(Kind.PING, self.policy, None)
            self._submit(lambda: self._put_now(bucket_state.PING_KEY, data, ctype, cache))
        self._put(rel, data, None)

    def _put(self, rel: str, data: bytes, media_type: str | None) -> None:
        kind = Kind.PING if rel == Layout.rel_ping() else _kind(rel)
        ctype, cache = object_headers(kind, self.policy, media_type)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._remember(rel, bucket_state.Entry(etag, len(data), data, media_type))
        self._submit(lambda: self._put_now(rel, data, ctype, cache))

    def _put_now(self, rel: str, data: bytes, ctype: str, cache: str) -> None:
        sha = "sha256:" + hashlib.sha256(data).hexdigest()
        self.s3.put_bytes(self._key(rel), data, content_type=ctype, cache_control=cache, sha256=sha)

    def _remember(self, rel: str, entry: bucket_state.Entry | None) -> None:
        with self._lock:
            if bucket_state.section_of(rel) == "manifests":
                self._manifest_bytes = None  # `_manifests` gathers them again
            if entry is None:
                self._entries.pop(rel, None)
            else:
                self._entries[rel] = entry
            self._dirty = True

    def remove(self, rel: str) -> None:
        entry = self._entries.get(rel)
        self._remember(rel, None)
        if entry is None or entry.etag is not None:
            self._submit(lambda: self.s3.delete([self._key(rel)]))

    def _submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(self._pool.submit(work))

    def flush(self) -> None:
        """Wait for everything this phase sent; the first failure is raised once all
        ended (nothing of the next phase starts before)."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        if errors:
            raise errors[0]
        self._between()

    def sweep(self, plan: gc_mod.GcPlan) -> None:
        """gc on the bucket: listings rewritten first, then deletes in `_SWEEP_ORDER`
        (one DeleteObjects per 1,000 keys and kind), then the state object."""
        for rel, data in plan.rewrites:
            self.write_doc(rel, data)
        self.flush()
        ranks: dict[int, list[str]] = {}
        for item in plan.sweeps:
            if item.rel.startswith(gc_mod.STORE_LABEL):
                continue  # no content store in a bucket (`has_content_store`)
            ranks.setdefault(_SWEEP_ORDER.get(item.what, 5), []).append(item.rel)
        for _rank, rels in sorted(ranks.items()):
            real = []
            for rel in sorted(rels):
                entry = self._entries.get(rel)
                self._remember(rel, None)
                if entry is None or entry.etag is not None:
                    real.append(self._key(rel))
            self.s3.delete(real)
            self._between()
        if plan.pending:
            self._dirty = True
        self.save_state()

    # -- the browse page ------------------------------------------------------------------
    def _manifests(self) -> dict[str, bytes]:
        """The manifests the bucket holds now, digest → bytes (as observed until this run
        writes or removes one)."""
        with self._lock:
            if self._manifest_bytes is not None:
                return self._manifest_bytes
            bodies = [
                e.body
                for rel, e in self._entries.items()
                if bucket_state.section_of(rel) == "manifests"
            ]
        return {sha256_digest(body): body for body in bodies}

    def _config_facts(self, ref: browse.ConfigRef) -> str | None:
        """`browse.config_facts` of a config in the bucket; None when absent or damaged."""
        rel = self._blob_keys.get(ref.digest) or Layout.rel_blob(ref.name, ref.digest)
        data = self.read(rel)
        if data is None or sha256_digest(data) != ref.digest:
            return None
        return browse.config_facts(data)

    def browse_writes(
        self, lock: Lock, lock_sha256: str, *, reuse: browse.Rendered | None = None
    ) -> browse.BrowseWrites:
        """What the bucket lacks of the browse page `lock` (whose bytes' sha256 is
        `lock_sha256`) and the bucket's manifests make (call after `observe`, and after the
        writes of a sync). Nothing is rendered when the state object's browse record still
        holds (`browse.holds`); `reuse` (a rendering of an earlier plan of this run) is
        taken when its inputs are still these. Reads only the configs the state object
        does not know; what it learns goes into the next state object."""
        manifests = self._manifests()
        inputs = browse.inputs_digest(lock_sha256, manifests, self._configs)
        if browse.holds(self._browse, inputs, self._listed):
            return browse.BrowseWrites({}, None, ())
        if reuse is not None and reuse.inputs == browse.inputs_digest(
            lock_sha256, manifests, reuse.configs
        ):
            self._keep_rendered(reuse)
            return browse.browse_writes(reuse.site, self._listed)
        parsed: dict[str, Manifest | None] = {}  # each manifest parsed once for both
        wanted = browse.wanted_configs(lock, manifests, parsed)
        unknown = [ref for digest, ref in sorted(wanted.items()) if digest not in self._configs]
        learned = map_parallel(self._config_facts, unknown, self._jobs)
        configs = {d: self._configs[d] for d in wanted if d in self._configs}
        configs.update({r.digest: f for r, f in zip(unknown, learned, strict=True) if f})
        site = browse.render(lock, manifests, configs, parsed)
        # a config that could not be read may be readable later: no fingerprint, no reuse
        complete = len(configs) == len(wanted)
        inputs = browse.inputs_digest(lock_sha256, manifests, configs) if complete else ""
        self._keep_rendered(browse.Rendered(inputs, configs, site))
        return browse.browse_writes(site, self._listed)

    def _keep_rendered(self, rendered: browse.Rendered) -> None:
        """Remember a rendering: its configs and (for the next state object) its record."""
        self.rendered = rendered
        record = browse.record_of(rendered.inputs, rendered.site) if rendered.inputs else None
        if rendered.configs != self._configs or record != self._browse:
            self._configs, self._browse, self._dirty = dict(rendered.configs), record, True

    def write_browse(self, writes: browse.BrowseWrites) -> None:
        """The data files, then the page naming them, then the data files it no longer
        names: each step done (flushed) before the next."""
        for rel, body in sorted(writes.data.items()):
            ctype, cache = object_headers(Kind.BROWSE_DATA, self.policy, None)
            self._submit(functools.partial(self._put_now, rel, body, ctype, cache))
        self.flush()
        if writes.page is not None:
            ctype, cache = object_headers(Kind.BROWSE, self.policy, None)
            self._put_now(BROWSE_REL, writes.page, ctype, cache)
            self._between()
        if writes.stale:
            self.s3.delete([self._key(rel) for rel in writes.stale])
            self._between()

    @property
    def needs_save(self) -> bool:
        """Whether the state object no longer matches what was observed or written (an
        object changed behind its back, one it vouched for is gone, or this run wrote)."""
        return self._dirty

    def save_state(self) -> bool:
        """Write the state object (last, after everything it vouches for); False when
        nothing changed since it was read."""
        if not self._dirty:
            return False
        with self._lock:
            data = bucket_state.encode(self._entries, self._configs, self._browse)
        self.s3.put_bytes(
            self._key(bucket_state.STATE_REL),
            data,
            content_type=_STATE_TYPE,
            cache_control="no-store",
            sha256="sha256:" + hashlib.sha256(data).hexdigest(),
        )
        self._dirty = False
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._parts.close()


@dataclass(frozen=True)
class Prefetched:
    """The state object (read) and the listing (`list_tree`), fetched before the store
    was made, concurrently (`prefetch`)."""

    state: bucket_state.Recorded
    listing: dict[str, RemoteObject]


def prefetch(s3: Boto3Store, target: S3Target) -> Prefetched:
    """What a first `observe` reads: the state object fetched and decoded beside the
    listing (while its pages are awaited)."""
    state = background(lambda: _read_state(s3, target), "bucket-state")
    listing = list_tree(s3, target)
    return Prefetched(state.result(), listing)


def _read_state(s3: Boto3Store, target: S3Target) -> bucket_state.Recorded:
    got = get_object(s3, target, bucket_state.STATE_REL)
    return bucket_state.read_state(got[0] if got is not None else None)


def list_tree(s3: Boto3Store, target: S3Target) -> dict[str, RemoteObject]:
    """Every object under the prefix outside the reserved one, keyed relative to it."""
    prefix = target.list_prefix
    result = {}
    for obj in s3.list_objects(prefix):
        rel = obj.key[len(prefix) :]
        if rel and not rel.startswith(bucket_state.RESERVED):
            result[rel] = RemoteObject(rel, obj.size, obj.etag)
    return result


def get_object(s3: Boto3Store, target: S3Target, rel: str) -> tuple[bytes, str | None] | None:
    """The object's bytes and Content-Type; None when absent."""
    from ._s3 import botocore_errors, client_error, error_code

    key = target.key(rel)
    try:
        answer = s3.client.get_object(Bucket=target.bucket, Key=key)
        return answer["Body"].read(), answer.get("ContentType")
    except botocore_errors() as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise client_error(exc, f"reading s3://{target.bucket}/{key}") from None


def _kind(rel: str) -> Kind:
    target = classify(rel)
    if isinstance(target, Miss):
        raise ValueError(f"{rel}: not a registry path")
    return target.kind
