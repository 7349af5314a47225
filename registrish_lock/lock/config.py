"""`registrish.toml`: load, validate strictly, and hash the inputs the lock depends on.

Every problem is a `ConfigError` naming the file, the key path (`image[2].versions`)
and the fix; unknown keys suggest the closest valid one.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bucket.target import S3Target, parse_s3_url
from ..errors import ConfigError, ReferenceError_, RegistrishError
from ..oci.manifest import Platform, sha256_digest
from ..oci.reference import (
    DOCKER_ARCHIVE,
    OCI_LAYOUT,
    TAG_RE,
    Reference,
    default_target_name,
    is_name,
    is_tag,
    parse_reference,
    parse_source,
)
from ..tls import TLS_KEYS, Address, ServerTls, parse_server_tls
from ..tree.layout import Layout, path_collisions
from . import fasttoml
from .tomlreader import Reader

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

HOSTS = ("nginx", "caddy", "apache", "netlify", "cloudflare", "s3", "plain")
DEFAULT_HOSTS = ("nginx",)
#: What a bucket root allows: the bucket serves its objects with their own metadata.
BUCKET_HOSTS = ("s3",)
#: A bucket tree's `Config.root`: a local path that is never created (nothing is
#: written locally; `lock`'s caches beside a root find nothing there).
BUCKET_PLACEHOLDER = ".registrish-bucket-root"
DEFAULT_TAG_CACHE_SECONDS = 60
_REGISTRY_KEYS = ("root", "store", "hosts", "hosts_dir", "listen", "tag_cache_seconds", *TLS_KEYS)
_DEFAULTS_KEYS = ("platforms", "referrers")
_IMAGE_KEYS = ("source", "name", "tags", "versions", "match", "latest", "platforms", "referrers")
_REGISTRIES_KEYS = ("insecure", "mirrors")
_TOP_KEYS = ("registry", "defaults", "image", "registries")
_LISTEN_RE = re.compile(r"(?:(?P<host>[0-9A-Za-z.\-]+|\[[0-9a-fA-F:]+\]):)?(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class ImageSpec:
    """One `[[image]]` block: an upstream repository and which of its tags to mirror."""

    source: Reference
    name: str
    tags: tuple[str, ...] = ()
    versions: SpecifierSet | None = None
    match: re.Pattern[str] | None = None
    latest: int | None = None
    #: None means every platform the upstream has.
    platforms: tuple[Platform, ...] | None = None
    index: int = 0
    #: Also mirror signatures, attestations and SBOMs referring to the locked manifests.
    referrers: bool = False

    @property
    def key(self) -> str:
        """The key path prefix for messages about this image."""
        return f"image[{self.index}]"

    @property
    def needs_listing(self) -> bool:
        return self.versions is not None or self.match is not None

    def input_hash(self) -> str:
        """What this image's lock entries depend on; recorded per image in the lock
        so a change to one image re-resolves only that image."""
        return _memo(self, "input_hash", self._input_hash)

    def _input_hash(self) -> str:
        return _hash(
            {
                "source": self.source.repository_ref,
                "tags": sorted(self.tags),
                "versions": str(self.versions) if self.versions is not None else None,
                "match": self.match.pattern if self.match is not None else None,
                "latest": self.latest,
                "platforms": (
                    sorted(str(p) for p in self.platforms) if self.platforms is not None else None
                ),
                # only when on, so locks made before the option existed stay fresh
                **({"referrers": True} if self.referrers else {}),
            }
        )


@dataclass(frozen=True)
class RegistrySettings:
    """`[registries."host"]`: per-upstream transport settings."""

    insecure: bool = False
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path
    hosts: tuple[str, ...]
    hosts_dir: Path
    listen_host: str
    listen_port: int
    tag_cache_seconds: int
    images: tuple[ImageSpec, ...]
    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    #: HTTPS for the nginx, Caddy and Apache configs (plain HTTP when unset).
    tls: ServerTls = field(default_factory=ServerTls)
    #: `[registry] store`; None = beside the root (`layout.default_store`).
    store: Path | None = None
    #: `[registry] root = "s3://BUCKET[/PREFIX]"`: the tree is that bucket, written by
    #: `sync` directly (`root` is then a local path nothing is written to).
    bucket: S3Target | None = None

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    @property
    def layout(self) -> Layout:
        """The tree and its content store."""
        return Layout(self.root, self.store)

    def registry_settings(self, registry: str) -> RegistrySettings:
        return self.registries.get(registry, RegistrySettings())

    def input_hash(self) -> str:
        """A hash of exactly what resolution depends on: a lock made from a config
        with another hash is stale. Hosts, root and transport settings are excluded."""
        return _memo(self, "input_hash", lambda: _hash(sorted(self.image_inputs().items())))

    def image_inputs(self) -> dict[str, str]:
        """Each image's input hash by repository name, sorted (the lock's `inputs`)."""
        return dict(sorted((i.name, i.input_hash()) for i in self.images))


def _memo(owner: object, key: str, compute: Callable[[], str]) -> str:
    """`compute()` once per (frozen) object: a config listing 100,000 tags is hashed by
    several steps of one command (the hash sorts and serializes every tag)."""
    memo: dict[str, str] = owner.__dict__.setdefault("_memo", {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _hash(doc: object) -> str:
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return sha256_digest(blob)


def load_config(path: Path) -> Config:
    """Read and validate `path`. Raises `ConfigError` (exit code 2) on any problem."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path,
            None,
            "no such file",
            hint="create one from registrish.toml.example, or pass -c PATH",
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"cannot read: {exc}", hint="save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    try:
        doc = fasttoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            path, None, f"invalid TOML: {exc}", hint="fix the syntax at that line (see toml.io)"
        ) from None
    return parse_config(doc, path)


#: Hosts whose generated configs spell out the tree's and the hosts dir's absolute paths.
_PATH_EMBEDDING_HOSTS = frozenset({"nginx", "caddy", "apache"})
#: In a quoted path: ends the string (`"`), escapes (`\`), an nginx variable (`$`), a Caddy
#: placeholder (`{`, `}`).
_UNSAFE_IN_CONFIGS = frozenset('"\\${}')


def parse_config(doc: Mapping[str, Any], path: Path) -> Config:
    r = Reader(path)
    r.check_keys(doc, _TOP_KEYS, "")
    base = path.parent
    registry = r.table(doc.get("registry", {}), "registry")
    r.check_keys(registry, _REGISTRY_KEYS, "registry")
    root_text = r.string(registry.get("root", "public"), "registry.root")
    bucket = _bucket_root(r, registry, root_text)
    root = base / (BUCKET_PLACEHOLDER if bucket is not None else root_text)
    hosts_dir = base / r.string(registry.get("hosts_dir", "hosts"), "registry.hosts_dir")
    store = None
    if "store" in registry:
        store = base / r.string(registry["store"], "registry.store")
        inside = os.path.abspath(store), os.path.abspath(root)
        if os.path.commonpath(inside) in inside:
            raise r.fail(
                "registry.store",
                f"{inside[0]!r} overlaps the root {inside[1]!r}: hosts that deploy the root "
                "whole would publish the store",
                "choose a directory beside the root, on the same filesystem "
                "(or omit the key: the default is <root>/../.registrish-<rootname>)",
            )
    default_hosts = BUCKET_HOSTS if bucket is not None else DEFAULT_HOSTS
    hosts = r.strings(registry.get("hosts", list(default_hosts)), "registry.hosts")
    local_hosts = [h for h in hosts if h not in BUCKET_HOSTS]
    if bucket is not None and local_hosts:
        raise r.fail(
            "registry.hosts",
            f"{', '.join(map(repr, local_hosts))} serve a local directory, not the bucket {bucket}",
            'the bucket serves itself: use hosts = ["s3"], or a local root for these hosts',
        )
    for i, host in enumerate(hosts):
        if host not in HOSTS:
            close = difflib.get_close_matches(host, HOSTS, n=1)
            raise r.fail(
                f"registry.hosts[{i}]",
                f"unknown host {host!r}",
                f"did you mean '{close[0]}'?" if close else f"choose from: {', '.join(HOSTS)}",
            )
    if "netlify" in hosts and "cloudflare" in hosts:
        raise r.fail(
            "registry.hosts",
            "'netlify' and 'cloudflare' both write the tree's _headers and _redirects",
            "list only the one you deploy to",
        )
    if any(h in _PATH_EMBEDDING_HOSTS for h in hosts):
        for key, value in (("registry.root", root), ("registry.hosts_dir", hosts_dir)):
            bad = sorted(
                {c for c in os.path.abspath(value) if c in _UNSAFE_IN_CONFIGS or ord(c) < 32}
            )
            if bad:
                raise r.fail(
                    key,
                    f"the path {os.path.abspath(value)!r} holds {' '.join(map(repr, bad))}, "
                    "which the nginx, Caddy and Apache configs would read as syntax",
                    "choose a directory whose path has no quote, backslash, $, { or } "
                    "and no control characters, or list other registry.hosts",
                )

    def address(text: str, key: str) -> Address:
        found = _LISTEN_RE.fullmatch(text)
        if found is None or not 0 < int(found["port"]) < 65536:
            raise r.fail(key, f"invalid address {text!r}", 'use "PORT" or "HOST:PORT"')
        return Address((found["host"] or "127.0.0.1").strip("[]"), int(found["port"]))

    listen = address(str(registry.get("listen", "127.0.0.1:8080")), "registry.listen")
    tls = parse_server_tls(r, registry, base, address, _UNSAFE_IN_CONFIGS)
    cache = r.integer(
        registry.get("tag_cache_seconds", DEFAULT_TAG_CACHE_SECONDS),
        "registry.tag_cache_seconds",
        0,
    )

    defaults = r.table(doc.get("defaults", {}), "defaults")
    r.check_keys(defaults, _DEFAULTS_KEYS, "defaults")
    default_platforms = (
        r.platforms(defaults["platforms"], "defaults.platforms")
        if "platforms" in defaults
        else None
    )
    default_referrers = r.boolean(defaults.get("referrers", False), "defaults.referrers")

    raw_images = doc.get("image", [])
    if not isinstance(raw_images, list):
        raise r.fail(
            "image", "must be an array of tables", "write each image as an [[image]] block"
        )
    images = tuple(
        _parse_image(
            r,
            r.table(raw, f"image[{i}]"),
            i,
            default_platforms,
            default_referrers=default_referrers,
        )
        for i, raw in enumerate(raw_images)
    )
    seen: dict[str, int] = {}
    for image in images:
        if image.name in seen:
            raise r.fail(
                f"{image.key}.name",
                f"repository name {image.name!r} is already used by image[{seen[image.name]}]",
                "give one of them a distinct 'name'",
            )
        seen[image.name] = image.index
    for name, problem in path_collisions({i.name: i.tags for i in images}):
        raise r.fail(f"image[{seen[name]}].name", problem, "give it another 'name'")

    registries: dict[str, RegistrySettings] = {}
    for host, raw in r.table(doc.get("registries", {}), "registries").items():
        key = f'registries."{host}"'
        table = r.table(raw, key)
        r.check_keys(table, _REGISTRIES_KEYS, key)
        try:
            normalized = parse_reference(f"{host}/x/y").registry
        except ReferenceError_:
            raise r.fail(
                key, f"invalid registry host {host!r}", 'use "host" or "host:port"'
            ) from None
        mirrors = r.strings(table.get("mirrors", []), f"{key}.mirrors")
        if mirrors and normalized != "docker.io":
            raise r.fail(
                f"{key}.mirrors",
                "mirrors are supported for docker.io only",
                'list them under [registries."docker.io"]',
            )
        registries[normalized] = RegistrySettings(
            insecure=r.boolean(table.get("insecure", False), f"{key}.insecure"), mirrors=mirrors
        )
    return Config(
        path=path,
        root=root,
        hosts=hosts,
        hosts_dir=hosts_dir,
        listen_host=listen.host,
        listen_port=listen.port,
        tag_cache_seconds=cache,
        images=images,
        registries=registries,
        tls=tls,
        store=store,
        bucket=bucket,
    )


def _bucket_root(r: Reader, registry: Mapping[str, Any], root: str) -> S3Target | None:
    """`root = "s3://BUCKET[/PREFIX]"` → the bucket tree; None for a local root. A bucket
    has no content store beside it and no local host to configure."""
    if not root.startswith("s3://"):
        if "://" in root:
            raise r.fail(
                "registry.root",
                f"{root!r} is no directory and no s3:// URL",
                'write a local directory ("public") or "s3://BUCKET[/PREFIX]"',
            )
        return None
    try:
        target = parse_s3_url(root)
    except RegistrishError as exc:
        raise r.fail("registry.root", exc.message, exc.hint) from None
    if "store" in registry:
        raise r.fail(
            "registry.store",
            "a bucket root has no local content store (blobs stream into the bucket)",
            "remove registry.store, or make registry.root a local directory",
        )
    return target


def check_local_sources(config: Config) -> None:
    """Every local source exists: checked by the commands that read sources (`lock`,
    `outdated`) before any work, so a typo fails at once and names its key. Not at load:
    `serve`, `check`, `gc`, `hosts` and a no-op `sync` work after the layout or archive a
    tree was synced from is gone (an unmounted USB disk, a deleted download)."""
    for image in config.images:
        expected = _LOCAL_SOURCE_KINDS.get(image.source.registry)
        path = config.path.parent / image.source.repository
        if expected is not None and not expected[0](path):
            raise ConfigError(
                config.path, f"{image.key}.source", f"{expected[1]} {str(path)!r}", hint=expected[2]
            )


#: scheme -> (the test its path must pass, what is missing, the hint)
_LOCAL_SOURCE_KINDS: dict[str, tuple[Callable[[Path], bool], str, str]] = {
    OCI_LAYOUT: (
        Path.is_dir,
        "no such directory",
        "oci:PATH names an OCI image layout directory, relative to the config file",
    ),
    DOCKER_ARCHIVE: (
        Path.is_file,
        "no such file",
        "docker-archive:FILE names a `docker save` tar, relative to the config file",
    ),
}


def _parse_image(
    r: Reader,
    raw: Mapping[str, Any],
    index: int,
    default_platforms: tuple[Platform, ...] | None,
    *,
    default_referrers: bool = False,
) -> ImageSpec:
    key = f"image[{index}]"
    r.check_keys(raw, _IMAGE_KEYS, key)
    if "source" not in raw:
        raise r.fail(f"{key}.source", "is required", 'e.g. source = "docker.io/library/alpine"')
    source_text = r.string(raw["source"], f"{key}.source")
    try:
        source = parse_source(source_text)
    except ReferenceError_ as exc:
        raise r.fail(f"{key}.source", exc.message, exc.hint) from None
    if source.digest:
        raise r.fail(
            f"{key}.source",
            "a source names a repository, not a digest",
            "remove the @sha256:… part",
        )
    if "name" not in raw and source.is_local and not is_name(default_target_name(source)):
        raise r.fail(
            f"{key}.name",
            f"is required: {source_text!r} gives no valid repository name",
            'add name = "team/app" (lowercase letters, digits and . _ - separators)',
        )
    name = r.string(raw.get("name", default_target_name(source)), f"{key}.name")
    if not is_name(name):
        raise r.fail(
            f"{key}.name",
            f"invalid repository name {name!r}",
            "use lowercase path components like 'team/app' ([a-z0-9] joined by '.', '_', '__' or '-')",
        )
    tags = r.strings(raw.get("tags", []), f"{key}.tags")
    bad = () if all(map(TAG_RE.fullmatch, tags)) else tags  # 100,000 tags: checked at C speed
    for i, tag in enumerate(bad):
        if not is_tag(tag):
            raise r.fail(
                f"{key}.tags[{i}]",
                f"invalid tag {tag!r}",
                "tags are 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
            )
    versions = None
    if "versions" in raw:
        spec_text = r.string(raw["versions"], f"{key}.versions")
        # imported here: 13 ms of every start-up otherwise, for a key few configs have
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            versions = SpecifierSet(spec_text)
        except InvalidSpecifier:
            raise r.fail(
                f"{key}.versions",
                f"invalid PEP 440 specifier {spec_text!r}",
                'write a comma-separated range such as ">=3.18,<4"',
            ) from None
    match = None
    if "match" in raw:
        pattern = r.string(raw["match"], f"{key}.match")
        try:
            match = re.compile(pattern)
        except re.error as exc:
            raise r.fail(
                f"{key}.match",
                f"invalid regular expression {pattern!r}: {exc}",
                "use Python regex syntax, e.g. '^3\\.\\d+$' (single quotes keep backslashes)",
            ) from None
    latest = None
    if "latest" in raw:
        latest = r.integer(raw["latest"], f"{key}.latest", 1)
        if versions is None and match is None:
            raise r.fail(f"{key}.latest", "needs 'versions' or 'match' to choose from")
    if not tags and versions is None and match is None:
        raise r.fail(key, "selects no tags", "add 'tags', 'versions' or 'match'")
    platforms = (
        r.platforms(raw["platforms"], f"{key}.platforms")
        if "platforms" in raw
        else default_platforms
    )
    return ImageSpec(
        source=source,
        name=name,
        tags=tuple(sorted(set(tags))),
        versions=versions,
        match=match,
        latest=latest,
        platforms=platforms,
        index=index,
        referrers=r.boolean(raw.get("referrers", default_referrers), f"{key}.referrers"),
    )
