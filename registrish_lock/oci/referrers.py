"""Referrers (signatures, attestations, SBOMs): the pure part. No I/O here.

Two conventions find what refers to a manifest, and both are mirrored:

- the OCI 1.1 *subject*: an artifact manifest whose `subject` names the manifest. A
  registry lists them at `GET /v2/<name>/referrers/<digest>` (an OCI index); one
  without that API gets an index tagged `sha256-<hex>` from the pusher instead (the OCI
  "referrers tag schema"). The static tree answers `referrers/<digest>` with an index
  built here from the artifact manifests themselves (`referrers_index`).
- cosign's tag schema: tags `sha256-<hex>.sig`, `.att` and `.sbom` pointing at artifact
  manifests (usually without a `subject`). They stay tags in the tree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import mediatypes
from .manifest import Manifest
from .reference import digest_hex, validate_digest

#: cosign's suffixes: signatures, attestations (in-toto), SBOMs (`cosign attach sbom`).
COSIGN_SUFFIXES: tuple[str, ...] = ("sig", "att", "sbom")
_COSIGN_TAG_RE = re.compile(r"sha256-([a-f0-9]{64})\.(sig|att|sbom)")
#: Referrers of referrers are followed this deep (a signature of an SBOM of an image is 2).
MAX_DEPTH = 2


def cosign_tags(digest: str) -> tuple[str, ...]:
    """`sha256:<hex>` → the cosign tags that may point at its signatures and friends."""
    hex_ = digest_hex(validate_digest(digest))
    return tuple(f"sha256-{hex_}.{suffix}" for suffix in COSIGN_SUFFIXES)


def schema_tag(digest: str) -> str:
    """The OCI referrers tag schema's tag for `digest` (an index of its referrers)."""
    return "sha256-" + digest_hex(validate_digest(digest))


def cosign_subject(tag: str) -> str | None:
    """`sha256-<hex>.sig` → `sha256:<hex>`; None for any other tag."""
    m = _COSIGN_TAG_RE.fullmatch(tag)
    return f"sha256:{m.group(1)}" if m else None


def artifact_type_of(manifest: Manifest) -> str:
    """What a referrers index says a manifest is (OCI 1.1): its `artifactType`, else its
    config's media type for an image manifest, else "" (an index without one)."""
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.config is not None:
        return manifest.config.media_type
    return ""


def refers_to(manifest: Manifest, subject: str) -> bool:
    return manifest.subject is not None and manifest.subject.digest == subject


def descriptor_of(manifest: Manifest) -> dict[str, Any]:
    """The index entry for one referrer: media type, digest, size, artifactType and the
    manifest's annotations, as the distribution spec's referrers response has them."""
    entry: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
    }
    artifact_type = artifact_type_of(manifest)
    if artifact_type:
        entry["artifactType"] = artifact_type
    if manifest.annotations:
        entry["annotations"] = dict(manifest.annotations)
    return entry


def referrers_index(referrers: Iterable[Manifest]) -> dict[str, Any]:
    """The OCI index a static host serves at `referrers/<subject>`, sorted by digest."""
    unique = {m.digest: m for m in referrers}
    return {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [descriptor_of(unique[d]) for d in sorted(unique)],
    }


def referrers_problems(data: bytes, expected: Mapping[str, str]) -> list[str]:
    """What is wrong with a referrers document that must list `expected` (digest →
    artifactType, "" for none). Other entries are tolerated: a tree may be shared."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("schemaVersion") != 2
        or not isinstance(doc.get("manifests"), list)
    ):
        return ["referrers document is not an OCI index"]
    listed = {
        m["digest"]: m.get("artifactType", "")
        for m in doc["manifests"]
        if isinstance(m, dict) and isinstance(m.get("digest"), str)
    }
    problems = []
    for digest, artifact_type in sorted(expected.items()):
        if digest not in listed:
            problems.append(f"does not list referrer {digest} (run `registrish sync`)")
        elif listed[digest] != artifact_type:
            problems.append(
                f"lists {digest} as {listed[digest]!r}, expected artifactType {artifact_type!r}"
            )
    return problems
