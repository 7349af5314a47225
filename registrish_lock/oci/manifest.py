"""Parse and validate image manifests and indexes.

A manifest comes from an untrusted upstream: every descriptor's digest, size and
media type is validated here, before anything derived from it reaches a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import IntegrityError, UpstreamError
from . import mediatypes
from .reference import is_digest

#: Manifests larger than this are refused (the distribution spec's suggested limit).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r} (expected os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def normalized(self) -> Platform:
        """As containerd's `platforms.Normalize`: `arm64/v8` is `arm64`, `amd64/v1` is
        `amd64`, a bare `arm` is `arm/v7`; `aarch64`, `x86_64`, `armhf`, `armel` are aliases."""
        arch = _ARCH_ALIASES.get(self.architecture, self.architecture)
        variant = self.variant or _IMPLIED_VARIANT.get(self.architecture)
        if variant is not None and variant[:1].isdigit():
            variant = f"v{variant}"
        if (arch, variant) in (("arm64", "v8"), ("arm64", "v8.0"), ("amd64", "v1")):
            variant = None
        return Platform(self.os, arch, variant)

    def matches(self, wanted: Platform) -> bool:
        """`linux/arm64` matches `linux/arm64/v8` (and the reverse, as containerd does); any
        other variant in `wanted` must be the child's."""
        have, want = self.normalized(), wanted.normalized()
        if (have.os, have.architecture) != (want.os, want.architecture):
            return False
        return wanted.variant is None or want.variant == have.variant


_ARCH_ALIASES = {
    "aarch64": "arm64",
    "x86_64": "amd64",
    "x86-64": "amd64",
    "armhf": "arm",
    "armel": "arm",
}
_IMPLIED_VARIANT = {"arm": "v7", "armhf": "v7", "armel": "v6"}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: an index (`children`) or an image (`config` + `layers`)."""

    media_type: str
    digest: str
    size: int
    children: tuple[Descriptor, ...] = ()
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    #: The document's string annotations, sorted (what a referrers index repeats).
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config then layers: every blob an image manifest needs."""
        return ((self.config,) if self.config else ()) + self.layers


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: descriptor is not an object")
    digest, size, media_type = raw.get("digest"), raw.get("size"), raw.get("mediaType")
    if not isinstance(digest, str) or not is_digest(digest):
        raise IntegrityError(
            f"{where}: descriptor digest {digest!r} is not sha256:<64 lowercase hex>"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{where}: descriptor size {size!r} is not a non-negative integer")
    if not mediatypes.is_media_type(media_type):
        raise IntegrityError(f"{where}: descriptor mediaType {media_type!r} is not a media type")
    assert isinstance(media_type, str)
    platform = None
    raw_platform = raw.get("platform")
    if isinstance(raw_platform, dict):
        os_, arch = raw_platform.get("os"), raw_platform.get("architecture")
        variant = raw_platform.get("variant")
        if isinstance(os_, str) and isinstance(arch, str):
            platform = Platform(os_, arch, variant if isinstance(variant, str) else None)
    artifact_type = raw.get("artifactType")
    urls = raw.get("urls")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=platform,
        artifact_type=artifact_type if mediatypes.is_media_type(artifact_type) else None,
        urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
    )


def _media_type_of(doc: dict[str, object], content_type: str | None) -> str | None:
    """The document's `mediaType`; else a manifest type the response named; else what the
    document's shape says (OCI allows omitting `mediaType`, and some registries answer
    `application/json`); else whatever the response named."""
    declared = doc.get("mediaType")
    if isinstance(declared, str):
        return declared
    named = mediatypes.strip_parameters(content_type) if content_type else None
    if named in mediatypes.MANIFEST_TYPES:
        return named
    if doc.get("schemaVersion") == 2 and "manifests" in doc:
        return mediatypes.OCI_INDEX
    if doc.get("schemaVersion") == 2 and "config" in doc:
        return mediatypes.OCI_MANIFEST
    return named


def parse_manifest(
    data: bytes, *, content_type: str | None = None, expected_digest: str | None = None
) -> Manifest:
    """Parse manifest bytes; verify them against `expected_digest` when given.

    The media type is the document's `mediaType`, else the response's Content-Type.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise IntegrityError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} cap")
    digest = sha256_digest(data)
    if expected_digest is not None and digest != expected_digest:
        raise IntegrityError(f"manifest bytes hash to {digest}, expected {expected_digest}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"manifest {digest} is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"manifest {digest} is not a JSON object")
    media_type = _media_type_of(doc, content_type)
    if media_type not in mediatypes.MANIFEST_TYPES:
        problem = f"manifest {digest} has unsupported media type {media_type!r}"
        if not isinstance(media_type, str) or not mediatypes.is_media_type(media_type):
            raise IntegrityError(problem)  # not even a media type: a broken or hostile source
        if doc.get("schemaVersion") == 1:
            problem = f"manifest {digest} is a Docker schema 1 manifest (deprecated)"
        raise UpstreamError(
            problem,
            hint="registrish mirrors OCI and Docker v2 schema 2 manifests and indexes; "
            "re-push the image with a current tool (docker, buildah, skopeo)",
        )
    where = f"manifest {digest}"
    raw_subject = doc.get("subject")
    subject = _descriptor(raw_subject, f"{where} subject") if raw_subject is not None else None
    raw_artifact = doc.get("artifactType")
    artifact_type = raw_artifact if isinstance(raw_artifact, str) else None
    if artifact_type is not None and not mediatypes.is_media_type(artifact_type):
        artifact_type = None
    raw_annotations = doc.get("annotations")
    annotations = (
        tuple(
            sorted(
                (k, v)
                for k, v in raw_annotations.items()
                if isinstance(k, str) and isinstance(v, str)
            )
        )
        if isinstance(raw_annotations, dict)
        else ()
    )
    if mediatypes.is_index(media_type):
        raw_children = doc.get("manifests")
        if not isinstance(raw_children, list):
            raise IntegrityError(f"{where}: index has no 'manifests' list")
        children = tuple(
            _descriptor(c, f"{where} manifests[{i}]") for i, c in enumerate(raw_children)
        )
        if any(c.digest == digest for c in children):
            raise IntegrityError(f"{where}: index refers to itself")
        return Manifest(
            media_type,
            digest,
            len(data),
            children=children,
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise IntegrityError(f"{where}: image manifest has no 'layers' list")
    layers = tuple(_descriptor(x, f"{where} layers[{i}]") for i, x in enumerate(raw_layers))
    return Manifest(
        media_type,
        digest,
        len(data),
        config=_descriptor(doc.get("config"), f"{where} config"),
        layers=layers,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
