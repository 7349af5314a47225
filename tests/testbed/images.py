"""Test images built without any network (umoci + busybox-static) and pushed with skopeo.

One OCI layout per session holds everything: ``v1`` (linux/amd64, runnable busybox, two
layers), ``v1-arm64`` (same layers, ``arch=arm64`` — it pulls but will not run here) and
``multi`` (an OCI index over both, written by hand with ``platform`` on each descriptor).
``skopeo copy --format v2s2`` turns those into Docker v2 schema 2 manifests and, with
``--all``, the index into a Docker manifest list: all four manifest kinds from one build.

The seeded repositories are shared by the whole session: do not move or delete their tags
in a test; push your own repository with :func:`push_random_image` instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .procs import require_binary, run
from .upstream import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Registry,
    get_manifest,
    put_manifest,
)

#: Tags of the ``many`` repository (all point at the ``app-oci:v1`` image).
MANY_TAGS: tuple[str, ...] = (
    "3.18",
    "3.19",
    "3.20",
    "3.20.1",
    "v4.0",
    "4.1.0",
    "latest",
    "edge",
    "1.0rc1",
    "3.21-alpine",
)
#: What ``docker run IMAGE`` prints with the default command of the built image.
DEFAULT_OUTPUT = "hello from registrish test image"


@dataclass(frozen=True)
class PushedRef:
    """One tag in the upstream, as the upstream serves it (digest of the exact bytes)."""

    registry_host: str
    name: str
    tag: str
    digest: str
    media_type: str
    size: int
    #: ``"linux/amd64" -> child manifest digest`` for an index/list; empty for a manifest.
    platforms: Mapping[str, str] = field(default_factory=dict)
    #: Layer digests (single manifests only), in manifest order.
    layers: tuple[str, ...] = ()
    config: str | None = None

    @property
    def ref(self) -> str:
        """``127.0.0.1:PORT/name:tag``."""
        return f"{self.registry_host}/{self.name}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        """``127.0.0.1:PORT/name@sha256:…``."""
        return f"{self.registry_host}/{self.name}@{self.digest}"

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_LIST)


@dataclass(frozen=True)
class BaseLayout:
    """The session's OCI layout and the tags in it."""

    path: Path
    amd64_tag: str = "v1"
    arm64_tag: str = "v1-arm64"
    index_tag: str = "multi"


@dataclass(frozen=True)
class SeededUpstream:
    """Everything :func:`seed_upstream` pushed, keyed ``"name:tag"``.

    Keys: ``app-oci:v1`` (OCI manifest), ``app-docker:v1`` (v2s2), ``multi:v1`` (OCI index,
    linux/amd64 + linux/arm64), ``multi-docker:v1`` (Docker manifest list),
    ``team/tools/app:v1`` (nested name) and ``many:<tag>`` for every tag of :data:`MANY_TAGS`.
    """

    registry: Registry
    layout: BaseLayout
    refs: Mapping[str, PushedRef]

    def __getitem__(self, key: str) -> PushedRef:
        return self.refs[key]

    def get(self, name: str, tag: str) -> PushedRef:
        return self.refs[f"{name}:{tag}"]

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def add_to_index(layout: Path, descriptor: dict[str, Any], tag: str) -> None:
    """Add (or replace) the descriptor tagged ``tag`` in the layout's ``index.json``."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    manifests = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    manifests.append({**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index["manifests"] = manifests
    index_path.write_text(json.dumps(index))


def _tagged_descriptor(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return {k: m[k] for k in ("mediaType", "digest", "size")}
    raise KeyError(f"no tag {tag!r} in {layout}")


def build_base_layout(workdir: Path) -> BaseLayout:
    """Build the base OCI layout in ``workdir/layout`` with umoci and ``/bin/busybox``.

    Layer 1: ``/bin/busybox`` + ``/bin/sh``; layer 2: ``/bin/echo``, ``/bin/cat``,
    ``/bin/ls`` symlinks and ``/etc/registrish-test``. Config: ``PATH=/bin``, cmd
    ``["echo", DEFAULT_OUTPUT]``.
    """
    umoci = require_binary("umoci")
    busybox = Path("/bin/busybox")
    if not busybox.exists():  # the busybox-static package
        require_binary("busybox")
        busybox = Path(shutil.which("busybox") or "/bin/busybox")
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    if layout.exists():
        shutil.rmtree(layout)
    if bundle.exists():
        shutil.rmtree(bundle)
    lo = str(layout)
    run([umoci, "init", "--layout", lo])
    run([umoci, "new", "--image", f"{lo}:base"])
    run([umoci, "unpack", "--rootless", "--image", f"{lo}:base", str(bundle)])
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    run([umoci, "repack", "--image", f"{lo}:base", str(bundle)])
    # A bundle remembers the manifest it was unpacked from: unpack again for a second layer.
    shutil.rmtree(bundle)
    run([umoci, "unpack", "--rootless", "--image", f"{lo}:base", str(bundle)])
    for tool in ("echo", "cat", "ls"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "registrish-test").write_text("registrish test image\n")
    run([umoci, "repack", "--image", f"{lo}:base", str(bundle)])
    common = ["--os", "linux", "--config.env", "PATH=/bin", "--config.cmd", "echo"]
    common += ["--config.cmd", DEFAULT_OUTPUT]
    for tag, arch in (("v1", "amd64"), ("v1-arm64", "arm64")):
        run(
            [
                umoci,
                "config",
                "--image",
                f"{lo}:base",
                "--tag",
                tag,
                "--architecture",
                arch,
                *common,
            ]
        )
    shutil.rmtree(bundle)

    base = BaseLayout(path=layout)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                **_tagged_descriptor(layout, base.amd64_tag),
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                **_tagged_descriptor(layout, base.arm64_tag),
                "platform": {"architecture": "arm64", "os": "linux"},
            },
        ],
    }
    desc = write_blob(layout, json.dumps(index, indent=2).encode())
    add_to_index(layout, {"mediaType": OCI_INDEX, **desc}, base.index_tag)
    return base


def skopeo_push(
    registry: Registry,
    layout: Path,
    tag: str,
    name: str,
    dest_tag: str,
    *,
    all_platforms: bool = False,
    v2s2: bool = False,
    preserve_digests: bool = False,
) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://HOST/NAME:DEST_TAG`` (plain HTTP).

    Without ``preserve_digests`` skopeo gzips uncompressed layers on the way (new digests).
    """
    skopeo = require_binary("skopeo")
    argv = [skopeo, "copy", "-q", "--dest-tls-verify=false"]
    if all_platforms:
        argv.append("--all")
    if v2s2:
        argv += ["--format", "v2s2"]
    if preserve_digests:
        argv.append("--preserve-digests")
    argv += [f"oci:{layout}:{tag}", f"docker://{registry.host}/{name}:{dest_tag}"]
    run(argv, what="skopeo push")


def describe(registry: Registry, name: str, tag: str) -> PushedRef:
    """What the upstream serves for ``name:tag`` (GET with the full Accept list)."""
    resp = get_manifest(registry.url, name, tag)
    if resp.status != 200:
        raise RuntimeError(f"{name}:{tag} -> HTTP {resp.status}: {resp.body[:300]!r}")
    header_digest = resp.headers.get("docker-content-digest")
    if header_digest is not None and header_digest != resp.digest:
        raise RuntimeError(f"{name}:{tag}: header digest {header_digest} != body {resp.digest}")
    doc = json.loads(resp.body)
    media_type = resp.content_type.split(";")[0].strip()
    platforms: dict[str, str] = {}
    layers: tuple[str, ...] = ()
    config: str | None = None
    if media_type in (OCI_INDEX, DOCKER_LIST):
        for m in doc["manifests"]:
            p = m.get("platform", {})
            key = f"{p.get('os')}/{p.get('architecture')}"
            if p.get("variant"):
                key += f"/{p['variant']}"
            platforms[key] = m["digest"]
    elif media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        layers = tuple(layer["digest"] for layer in doc["layers"])
        config = doc["config"]["digest"]
    return PushedRef(
        registry_host=registry.host,
        name=name,
        tag=tag,
        digest=resp.digest,
        media_type=media_type,
        size=len(resp.body),
        platforms=platforms,
        layers=layers,
        config=config,
    )


def retag(registry: Registry, name: str, src_tag: str, dst_tag: str, *, dst_name: str = "") -> str:
    """Point ``dst_name:dst_tag`` (default: same repository) at the manifest of ``name:src_tag``.

    Byte-exact ``GET`` + ``PUT`` of the manifest (no re-encoding, same digest); cheaper than
    ``skopeo copy docker://… docker://…``. The blobs must already be in the target repository
    (true for a retag within one repository). Returns the digest.
    """
    resp = get_manifest(registry.url, name, src_tag)
    if resp.status != 200:
        raise RuntimeError(f"retag: {name}:{src_tag} -> HTTP {resp.status}")
    media_type = resp.content_type.split(";")[0].strip()
    return put_manifest(registry.url, dst_name or name, dst_tag, resp.body, media_type)


def seed_upstream(registry: Registry, layout: BaseLayout) -> SeededUpstream:
    """Push every seeded ref (see :class:`SeededUpstream`) and describe it."""
    lo = layout.path
    skopeo_push(registry, lo, layout.amd64_tag, "app-oci", "v1")
    skopeo_push(registry, lo, layout.amd64_tag, "app-docker", "v1", v2s2=True)
    skopeo_push(registry, lo, layout.index_tag, "multi", "v1", all_platforms=True)
    skopeo_push(registry, lo, layout.index_tag, "multi-docker", "v1", all_platforms=True, v2s2=True)
    skopeo_push(registry, lo, layout.amd64_tag, "team/tools/app", "v1")
    skopeo_push(registry, lo, layout.amd64_tag, "many", MANY_TAGS[0])
    for tag in MANY_TAGS[1:]:
        retag(registry, "many", MANY_TAGS[0], tag)
    keys = [("app-oci", "v1"), ("app-docker", "v1"), ("multi", "v1"), ("multi-docker", "v1")]
    keys += [("team/tools/app", "v1")] + [("many", t) for t in MANY_TAGS]
    refs = {f"{n}:{t}": describe(registry, n, t) for n, t in keys}
    return SeededUpstream(registry=registry, layout=layout, refs=refs)


# -- random images ------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    """Write-through file wrapper that hashes and counts what passes."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.hash.update(b)
        self.size += len(b)
        self.target.write(b)
        return len(b)


class _RandomReader(io.RawIOBase):
    """``size`` pseudo-random bytes from ``rng``, read in chunks (never all in memory)."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.rng = rng
        self.remaining = size

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.remaining
        n = min(n, self.remaining, 1 << 20)
        self.remaining -= n
        return self.rng.randbytes(n)


def write_random_layer(
    blobs_tmp: Path, index: int, size: int, rng: random.Random, gzipped: bool
) -> tuple[Path, str, str, int]:
    """Write one layer (a tar with one file of ``size`` random bytes) to a temp file.

    Returns ``(path, digest as stored, diff_id, stored size)``.
    """
    path = blobs_tmp / f"layer-{index}.tmp"
    with path.open("wb") as raw:
        stored = _HashingWriter(raw)
        gz = gzip.GzipFile(fileobj=stored, mode="wb", mtime=0, compresslevel=1) if gzipped else None
        tar_target: IO[bytes] = gz if gz is not None else stored  # type: ignore[assignment]
        plain = _HashingWriter(tar_target)
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"data/layer-{index}.bin")
            info.size = size
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, _RandomReader(rng, size))
        if gz is not None:
            gz.close()
    return (
        path,
        "sha256:" + stored.hash.hexdigest(),
        "sha256:" + plain.hash.hexdigest(),
        stored.size,
    )


def write_random_image(
    layout: Path,
    tag: str,
    layer_sizes: Sequence[int],
    *,
    seed: int = 0,
    gzip_layers: bool = False,
    architecture: str = "amd64",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write an image of random layers into the OCI layout ``layout`` (created if missing).

    Same ``seed`` and sizes → same bytes → same digests. Returns the manifest descriptor.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    rng = random.Random(seed)
    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
    layers: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layer_sizes):
        tmp, digest, diff_id, stored = write_random_layer(layout, i, size, rng, gzip_layers)
        tmp.replace(_blob_path(layout, digest))
        layers.append({"mediaType": layer_type, "digest": digest, "size": stored})
        diff_ids.append(diff_id)
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Labels": dict(labels or {"org.registrish.test.seed": str(seed)})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"random layer {i}"} for i in range(len(layer_sizes))],
    }
    config_desc = write_blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": layers,
    }
    desc = {"mediaType": OCI_MANIFEST, **write_blob(layout, json.dumps(manifest).encode())}
    add_to_index(layout, desc, tag)
    return desc


def push_random_image(
    upstream: Registry,
    name: str,
    tag: str,
    layer_sizes: Sequence[int] = (1024,),
    *,
    seed: int = 0,
    gzip_layers: bool = False,
    workdir: Path,
    v2s2: bool = False,
) -> PushedRef:
    """Build an image of random layers (``layer_sizes`` bytes of file content each) and push
    it to ``upstream`` as ``name:tag`` with skopeo; returns what the upstream serves.

    OCI pushes keep the layout's digests (``--preserve-digests``: no recompression, so big
    random layers cost no CPU); ``v2s2=True`` converts (and gzips uncompressed layers).

    ``workdir`` holds the OCI layout (reusable across calls). Different ``seed`` → different
    digests, so pushing again with another seed *moves* the tag.
    """
    layout = workdir / "random-layout"
    local_tag = f"{name.replace('/', '_')}_{tag}_{seed}"
    write_random_image(layout, local_tag, layer_sizes, seed=seed, gzip_layers=gzip_layers)
    skopeo_push(upstream, layout, local_tag, name, tag, v2s2=v2s2, preserve_digests=not v2s2)
    return describe(upstream, name, tag)
