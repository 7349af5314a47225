"""Manifest media types: what we accept, and how each is stored and served."""

from __future__ import annotations

import re

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES

#: Sent on every manifest request: a registry may otherwise answer 404 for OCI
#: content or down-convert to schema 1 (docker-registry does both).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

#: Each manifest type's short kind; the tree stores a typed twin of every manifest
#: file with this suffix so that a host can pick the Content-Type by file name.
KIND_OF: dict[str, str] = {
    OCI_INDEX: "oci-index",
    OCI_MANIFEST: "oci-manifest",
    DOCKER_LIST: "docker-list",
    DOCKER_MANIFEST: "docker-manifest",
}
TYPE_OF_KIND: dict[str, str] = {kind: mt for mt, kind in KIND_OF.items()}
#: The order hosts try typed twins in; any order works since a ref has only one.
KINDS: tuple[str, ...] = ("oci-index", "oci-manifest", "docker-list", "docker-manifest")

# RFC 6838 type/subtype: no spaces, no parameters, no path tricks beyond the one '/'.
_MEDIA_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


def is_media_type(value: object) -> bool:
    return isinstance(value, str) and _MEDIA_TYPE_RE.fullmatch(value) is not None


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def strip_parameters(content_type: str) -> str:
    """`application/json; charset=utf-8` → `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()
