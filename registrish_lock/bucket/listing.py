"""`registrish ls` on a bucket root: the browse model's facts from the lock plus the
bucket's manifests (from its state object, cross-checked by the listing) and the image
configs of single-image tags (one small GET each, for their platform)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..errors import IntegrityError
from ..lock.lockfile import Lock
from ..oci import mediatypes
from ..oci.manifest import parse_manifest, sha256_digest
from ..serving.browse import IMAGE_CONFIG_TYPES, MAX_CONFIG_BYTES, TagFacts, model_from
from ..serving.listing import Listed, Listing
from ..tree.layout import Layout
from ..tree.state import TreeState
from .store import BucketStore


def _configs(store: BucketStore, state: TreeState, lock: Lock) -> dict[str, bytes]:
    configs: dict[str, bytes] = {}
    for tag in lock.tags:
        data = state.manifest_bytes.get(tag.digest)
        if data is None or mediatypes.is_index(tag.media_type):
            continue
        try:
            config = parse_manifest(data, expected_digest=tag.digest).config
        except IntegrityError:
            continue
        rel = Layout.rel_blob(tag.name, config.digest) if config is not None else ""
        if (
            config is None
            or config.digest in configs
            or config.media_type not in (IMAGE_CONFIG_TYPES)
        ):
            continue
        info = state.files.get(rel)
        if info is None or info.size > MAX_CONFIG_BYTES:
            continue
        blob = store.read(rel)
        if blob is not None and sha256_digest(blob) == config.digest:  # only verified bytes
            configs[config.digest] = blob
    return configs


def list_bucket(store: BucketStore, lock: Lock, names: Sequence[str] = ()) -> Listing:
    """Every locked repository (or only those in `names`) with its tags, as `list_tree`."""
    if names:
        lock = replace(lock, tags=tuple(t for t in lock.tags if t.name in names))
    state = store.observe()

    def serves(facts: TagFacts) -> bool:
        twin = Layout.rel_manifest_twin(facts.name, facts.tag, facts.media_type)
        return state.manifest_digests.get(twin) == facts.digest

    model = model_from(lock, state.manifest_bytes, _configs(store, state, lock))
    return [(name, [Listed(f, serves(f)) for f in tags]) for name, tags in model.repositories]
