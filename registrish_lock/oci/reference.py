"""Repository names, tags, digests and image references, as the distribution spec
and docker define them.

Everything that later becomes part of a filesystem path passes through one of the
`validate_*` functions first: the grammar admits no `/`-escapes, no `..`, no upper case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ReferenceError_

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_DOMAIN_RE = re.compile(
    r"(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
#: The distribution spec caps a full name (registry host included) at 255 characters.
MAX_NAME_LENGTH = 255
#: Local sources (`upstream/sources.py`): `oci:PATH` is an OCI image layout, `docker-archive:FILE` the
#: output of `docker save`. Their `Reference` has the scheme as `registry` (no real registry
#: can be called that: a host needs a '.', a ':' or to be 'localhost') and PATH as written
#: (relative to the config's directory) as `repository`.
OCI_LAYOUT = "oci"
DOCKER_ARCHIVE = "docker-archive"
LOCAL_SCHEMES = (OCI_LAYOUT, DOCKER_ARCHIVE)


def is_name(value: str) -> bool:
    return len(value) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(value) is not None


def is_tag(value: str) -> bool:
    return TAG_RE.fullmatch(value) is not None


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None


#: What each validator accepts, and the hint its one-line error gives.
_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "repository name": (
        is_name,
        "names are lowercase path components like 'team/app' "
        "([a-z0-9] separated by '.', '_', '__' or '-')",
    ),
    "tag": (
        is_tag,
        "tags are 1-128 characters of [A-Za-z0-9_.-] and do not start with '.' or '-'",
    ),
    "digest": (is_digest, "registrish accepts 'sha256:' followed by 64 lowercase hex digits"),
}


def _valid(value: str, what: str) -> str:
    accepts, hint = _RULES[what]
    if not accepts(value):
        raise ReferenceError_(f"invalid {what} {value!r}", hint=hint)
    return value


def validate_name(value: str) -> str:
    return _valid(value, "repository name")


def validate_tag(value: str) -> str:
    return _valid(value, "tag")


def validate_digest(value: str) -> str:
    return _valid(value, "digest")


def digest_hex(digest: str) -> str:
    """The hex part of a validated digest: safe to use as a file name."""
    return validate_digest(digest)[len("sha256:") :]


@dataclass(frozen=True, order=True)
class Reference:
    """A normalised image reference: `registry/repository[:tag][@digest]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """The host to talk HTTP to (Docker Hub's API lives elsewhere)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_local(self) -> bool:
        """An `oci:` layout or a `docker-archive:` file rather than a registry."""
        return self.registry in LOCAL_SCHEMES

    @property
    def repository_ref(self) -> str:
        if self.is_local:
            return f"{self.registry}:{self.repository}"  # as written in the config
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.repository_ref
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _is_registry_component(first: str) -> bool:
    # docker's rule: the first component is a registry when it has a '.' or ':'
    # or is exactly 'localhost'; otherwise the reference names a Docker Hub repository.
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def parse_reference(text: str, *, allow_tag: bool = True) -> Reference:
    """Parse and normalise an image reference the way docker does.

    `alpine` → `docker.io/library/alpine`, `user/app` → `docker.io/user/app`,
    `host:5000/a/b:tag@sha256:…` keeps its registry, tag and digest.
    """
    raw = text.strip()
    if not raw or raw != text or any(c.isspace() for c in raw):
        raise ReferenceError_(f"invalid image reference {text!r}")
    rest, digest = raw, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        validate_digest(digest)
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not allow_tag:
            raise ReferenceError_(
                f"invalid image reference {text!r}: a source names a repository, not a tag",
                hint="list tags under 'tags = [...]' instead of in 'source'",
            )
        validate_tag(tag)
    parts = rest.split("/")
    if len(parts) > 1 and _is_registry_component(parts[0]):
        registry, path = parts[0], "/".join(parts[1:])
        if _DOMAIN_RE.fullmatch(registry) is None:
            raise ReferenceError_(
                f"invalid registry host {registry!r} in {text!r}",
                hint="a registry host is a DNS name or IP address with an optional :port",
            )
        if registry.lower() in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, path = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not is_name(path):
        raise ReferenceError_(
            f"invalid repository {path!r} in {text!r}",
            hint="repository paths are lowercase, e.g. 'library/alpine' or 'team/app'",
        )
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def parse_source(text: str) -> Reference:
    """An `[[image]].source` or a lock's `source`: `oci:PATH`, `docker-archive:FILE` or a
    repository reference (no tag, no digest check here: see `parse_reference`)."""
    scheme, sep, path = text.partition(":")
    if not sep or scheme not in LOCAL_SCHEMES:
        return parse_reference(text, allow_tag=False)
    if not path or path != path.strip() or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise ReferenceError_(
            f"invalid local source {text!r}",
            hint=f"write {scheme}:PATH with a path relative to the config's directory",
        )
    if ":" in path:  # skopeo's oci:PATH:TAG; here tags are selected with 'tags'/'match'
        raise ReferenceError_(
            f"invalid local source {text!r}: a source names a layout or archive, not a tag",
            hint="list tags under 'tags = [...]'; paths containing ':' are not supported",
        )
    return Reference(registry=scheme, repository=path)


def default_target_name(ref: Reference) -> str:
    """The repository name an upstream image gets in our registry by default:
    its path without Docker Hub's `library/` prefix (`docker.io/library/alpine` → `alpine`).
    A local source's is its last path component without `.tar` ('' when there is none)."""
    if ref.is_local:
        last = ref.repository.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        stem = last.removesuffix(".tar") if ref.registry == DOCKER_ARCHIVE else last
        return "" if stem in ("", ".", "..") else stem
    if ref.registry == DOCKER_HUB and ref.repository.startswith("library/"):
        return ref.repository[len("library/") :]
    return ref.repository
