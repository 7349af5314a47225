"""Benchmark data: declared as pure specs, generated offline, pushed to a real docker-registry.

Four sets live in one upstream (one repository prefix each):

- ``real``: about 1 GiB of unique blob bytes over 13 tags; layers from 1 KiB to 200 MiB;
  apps share base layers (debian/alpine/language runtimes) as real images do; three
  multi-arch OCI indexes; ``apps/ten:1`` has 10 layers (the pull scenario).
- ``noshare``: the *same* unique layers, each used by exactly one single-platform image,
  so the only difference from ``real`` is sharing.
- ``wide``: many small tags over 10 repositories; every tag a distinct manifest (an
  annotation) over the repository's one 1 KiB layer.
- ``big``: one image with a single 2 GiB layer.
- ``sizes``: one image whose layers have the blob sizes the serving scenario measures
  (16 KiB, 3 MiB, 30 MiB, 200 MiB, at every scale but ``smoke``).

Layers are uncompressed tars of pseudo-random bytes (seeded by the layer's name, so the same
spec gives the same digests), pushed with ``--preserve-digests``. Everything is cached under
the cache directory: the OCI layout, the registry's storage and ``pushed.json``; a changed
spec (or scale) invalidates the cache.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.images import add_to_index, skopeo_push, write_blob, write_random_layer
from testbed.upstream import OCI_INDEX, OCI_MANIFEST, Registry, get_manifest, put_manifest

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: Bump when the generator changes in a way the spec hash does not see.
GENERATOR_VERSION = 1
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


# -- specs (pure) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big the generated data is. ``factor`` scales every layer of ``real``/``noshare``."""

    name: str
    factor: float
    wide_tags: int
    big_layer: int
    #: Scales the ``sizes`` set's layers: 1 except in the smoke test (bytes on a wire do
    #: not shrink with the data set, so `--quick` serves the real sizes).
    sizes_factor: float = 1.0


SCALES: Mapping[str, Scale] = {
    "full": Scale("full", 1.0, 1000, 2 * GiB),
    "quick": Scale("quick", 0.1, 200, 256 * MiB),
    # CI smoke test: only proves every scenario runs and produces numbers.
    "smoke": Scale("smoke", 0.004, 20, 4 * MiB, sizes_factor=0.004),
}


@dataclass(frozen=True)
class PlatformImage:
    platform: str  # "os/arch"
    layers: tuple[str, ...]  # layer keys


@dataclass(frozen=True)
class TagSpec:
    repo: str
    tag: str
    images: tuple[PlatformImage, ...]  # more than one → an OCI index

    @property
    def is_index(self) -> bool:
        return len(self.images) > 1


@dataclass(frozen=True)
class SetSpec:
    name: str
    tags: tuple[TagSpec, ...]


# Full-scale layer sizes (bytes of file content; the tar adds ~2 KiB).
_REAL_LAYERS: dict[str, int] = {
    "debian-amd64": 30 * MiB,
    "debian-arm64": 28 * MiB,
    "alpine-amd64": 3584 * KiB,
    "alpine-arm64": 3380 * KiB,
    "python-amd64": 50 * MiB,
    "python-arm64": 47 * MiB,
    "node-amd64": 45 * MiB,
    "jdk-amd64": 200 * MiB,
    "go-amd64": 120 * MiB,
    "api-1.0": 80 * MiB,
    "api-1.1": 82 * MiB,
    "web-2.0": 100 * MiB,
    "batch-1": 150 * MiB,
    "tool-1": 12 * MiB,
    "ml-1": 30 * MiB,
    "cfg-a": 1 * KiB,
    "cfg-b": 4 * KiB,
    "cfg-c": 64 * KiB,
    "cfg-d": 512 * KiB,
}
_TEN_SIZES: tuple[int, ...] = (1 * KiB, 16 * KiB, 256 * KiB, 1 * MiB, 2 * MiB, 4 * MiB)
_TEN_SIZES += (6 * MiB, 8 * MiB, 10 * MiB, 12 * MiB)
_REAL_LAYERS.update({f"ten-{i}": size for i, size in enumerate(_TEN_SIZES)})

TEN_LAYER_REF = ("apps/ten", "1")

#: The blob sizes served in the serving scenario (file content; the tar adds ~2 KiB).
SERVED_SIZES: dict[str, int] = {
    "16k": 16 * KiB,
    "3m": 3 * MiB,
    "30m": 30 * MiB,
    "200m": 200 * MiB,
}


def _amd64(*layers: str) -> tuple[PlatformImage, ...]:
    return (PlatformImage("linux/amd64", layers),)


def _multi(amd64: Sequence[str], arm64: Sequence[str]) -> tuple[PlatformImage, ...]:
    return (PlatformImage("linux/amd64", tuple(amd64)), PlatformImage("linux/arm64", tuple(arm64)))


def _real_tags() -> tuple[TagSpec, ...]:
    deb, py = "debian-amd64", "python-amd64"
    return (
        TagSpec("base/debian", "12", _multi([deb], ["debian-arm64"])),
        TagSpec("base/alpine", "3.20", _multi(["alpine-amd64"], ["alpine-arm64"])),
        TagSpec(
            "lang/python", "3.12", _multi([deb, py, "cfg-a"], ["debian-arm64", "python-arm64"])
        ),
        TagSpec("lang/node", "22", _amd64(deb, "node-amd64", "cfg-b")),
        TagSpec("lang/jdk", "21", _amd64(deb, "jdk-amd64", "cfg-c")),
        TagSpec("lang/go", "1.22", _amd64("alpine-amd64", "go-amd64")),
        TagSpec("apps/api", "1.0", _amd64(deb, py, "api-1.0", "cfg-d")),
        TagSpec("apps/api", "1.1", _amd64(deb, py, "api-1.1", "cfg-d")),
        TagSpec("apps/web", "2.0", _amd64(deb, "node-amd64", "web-2.0")),
        TagSpec("apps/batch", "1", _amd64(deb, "jdk-amd64", "batch-1")),
        TagSpec("apps/tool", "1", _amd64("alpine-amd64", "tool-1")),
        TagSpec("apps/ml", "1", _amd64(deb, py, "ml-1")),
        TagSpec(*TEN_LAYER_REF, _amd64(*(f"ten-{i}" for i in range(len(_TEN_SIZES))))),
    )


def _noshare_tags(layer_sizes: Mapping[str, int], bins: int = 12) -> tuple[TagSpec, ...]:
    """Every unique layer of ``real`` in exactly one image; images balanced by size."""
    groups: list[list[str]] = [[] for _ in range(bins)]
    totals = [0] * bins
    for key in sorted(layer_sizes, key=lambda k: (-layer_sizes[k], k)):
        i = totals.index(min(totals))
        groups[i].append(key)
        totals[i] += layer_sizes[key]
    return tuple(
        TagSpec(f"img-{i:02d}", "1", _amd64(*group)) for i, group in enumerate(groups) if group
    )


@dataclass(frozen=True)
class Plan:
    """Everything to generate at one scale (pure; hashed for the cache)."""

    scale: Scale
    layers: Mapping[str, int]
    sets: Mapping[str, SetSpec]
    wide_repos: int = 10

    def spec_hash(self) -> str:
        doc = {
            "version": GENERATOR_VERSION,
            "scale": asdict(self.scale),
            "layers": dict(sorted(self.layers.items())),
            "sets": {k: asdict(v) for k, v in sorted(self.sets.items())},
            "wide_repos": self.wide_repos,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(scale: Scale) -> Plan:
    real_layers = {k: max(KiB, int(v * scale.factor)) for k, v in _REAL_LAYERS.items()}
    wide_repos = 10
    layers = dict(real_layers)
    layers["big-1"] = scale.big_layer
    layers.update({f"wide-{r:02d}": KiB for r in range(wide_repos)})
    sized = {f"size-{k}": max(KiB, int(v * scale.sizes_factor)) for k, v in SERVED_SIZES.items()}
    layers.update(sized)
    sets = {
        "real": SetSpec("real", _real_tags()),
        "noshare": SetSpec("noshare", _noshare_tags(real_layers)),
        "big": SetSpec("big", (TagSpec("one", "1", _amd64("big-1")),)),
        "sizes": SetSpec("sizes", (TagSpec("blobs", "1", _amd64(*sized)),)),
        # Only the first tag of each wide repository is built; the rest are annotated copies.
        "wide": SetSpec(
            "wide", tuple(TagSpec(f"r{r:02d}", "t0000", _amd64(f"wide-{r:02d}")) for r in range(10))
        ),
    }
    return Plan(scale=scale, layers=layers, sets=sets, wide_repos=wide_repos)


# -- what was pushed ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Blob:
    repo: str  # one repository (of the set) that has it
    digest: str
    size: int


@dataclass(frozen=True)
class PushedTag:
    repo: str  # full upstream repository name, e.g. "real/apps/api"
    tag: str
    digest: str
    media_type: str


@dataclass(frozen=True)
class DataSet:
    """One pushed set: its tags and its unique blobs (layers and configs)."""

    name: str
    tags: tuple[PushedTag, ...]
    blobs: tuple[Blob, ...]

    @property
    def blob_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def repos(self) -> dict[str, list[str]]:
        """Repository → tags, in push order."""
        out: dict[str, list[str]] = {}
        for t in self.tags:
            out.setdefault(t.repo, []).append(t.tag)
        return out

    def largest_blob(self, at_most: int | None = None) -> Blob:
        candidates = [b for b in self.blobs if at_most is None or b.size <= at_most]
        return max(candidates, key=lambda b: (b.size, b.digest))

    def summary(self) -> str:
        indexes = sum(1 for t in self.tags if t.media_type == OCI_INDEX)
        return (
            f"{len(self.tags)} tags in {len(self.repos)} repositories ({indexes} multi-arch "
            f"indexes), {len(self.blobs)} unique blobs, {self.blob_bytes / MiB:,.1f} MiB"
        )


@dataclass(frozen=True)
class Data:
    plan_hash: str
    sets: Mapping[str, DataSet] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"plan_hash": self.plan_hash, "sets": {k: asdict(v) for k, v in self.sets.items()}},
            indent=1,
        )

    @staticmethod
    def from_json(text: str) -> Data:
        doc = json.loads(text)
        sets = {
            name: DataSet(
                name=name,
                tags=tuple(PushedTag(**t) for t in s["tags"]),
                blobs=tuple(Blob(**b) for b in s["blobs"]),
            )
            for name, s in doc["sets"].items()
        }
        return Data(plan_hash=doc["plan_hash"], sets=sets)


# -- generation (I/O) --------------------------------------------------------------------------
def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"registrish-bench:{key}".encode()).digest()[:8], "big")


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _ensure_layers(layout: Path, layers: Mapping[str, int], log: Any) -> dict[str, Blob]:
    """Write every layer not yet in the layout (``layers.json`` remembers key → digest)."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    known_path = layout / "layers.json"
    known: dict[str, dict[str, Any]] = (
        json.loads(known_path.read_text()) if known_path.exists() else {}
    )
    out: dict[str, Blob] = {}
    for key, size in layers.items():
        entry = known.get(key)
        if (
            entry is None
            or entry["content"] != size
            or not _blob_path(layout, entry["digest"]).exists()
        ):
            log(f"  generating layer {key} ({size / MiB:,.1f} MiB)")
            tmp, digest, _diff_id, stored = write_random_layer(
                layout, 0, size, random.Random(_seed(key)), False
            )
            tmp.replace(_blob_path(layout, digest))
            entry = {"digest": digest, "size": stored, "content": size}
            known[key] = entry
            known_path.write_text(json.dumps(known, indent=1, sort_keys=True))
        out[key] = Blob(repo="", digest=entry["digest"], size=entry["size"])
    return out


def _write_image(
    layout: Path, set_name: str, spec: TagSpec, layers: Mapping[str, Blob]
) -> tuple[str, list[Blob]]:
    """Write the manifest(s) of one tag into the layout; returns (layout tag, config blobs)."""
    local_tag = f"{set_name}-{spec.repo.replace('/', '-')}-{spec.tag}"
    descs: list[dict[str, Any]] = []
    configs: list[Blob] = []
    for image in spec.images:
        os_, arch = image.platform.split("/")
        blobs = [layers[k] for k in image.layers]
        config = {
            "architecture": arch,
            "os": os_,
            "config": {"Labels": {"org.registrish.bench": f"{set_name}/{spec.repo}:{spec.tag}"}},
            # Uncompressed layers: the diff_id is the layer digest.
            "rootfs": {"type": "layers", "diff_ids": [b.digest for b in blobs]},
            "history": [{"created_by": f"layer {k}"} for k in image.layers],
        }
        config_desc = write_blob(layout, json.dumps(config, sort_keys=True).encode())
        configs.append(Blob(repo="", digest=config_desc["digest"], size=config_desc["size"]))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, **config_desc},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": b.digest, "size": b.size} for b in blobs
            ],
        }
        desc = {"mediaType": OCI_MANIFEST, **write_blob(layout, json.dumps(manifest).encode())}
        descs.append({**desc, "platform": {"os": os_, "architecture": arch}})
    if spec.is_index:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}
        root = {"mediaType": OCI_INDEX, **write_blob(layout, json.dumps(index).encode())}
    else:
        root = {k: descs[0][k] for k in ("mediaType", "digest", "size")}
    add_to_index(layout, root, local_tag)
    return local_tag, configs


def _push_set(
    registry: Registry, layout: Path, spec: SetSpec, layers: Mapping[str, Blob], log: Any
) -> DataSet:
    tags: list[PushedTag] = []
    blobs: dict[str, Blob] = {}
    for t in spec.tags:
        repo = f"{spec.name}/{t.repo}"
        local_tag, configs = _write_image(layout, spec.name, t, layers)
        log(f"  pushing {repo}:{t.tag}")
        skopeo_push(
            registry,
            layout,
            local_tag,
            repo,
            t.tag,
            all_platforms=t.is_index,
            preserve_digests=True,
        )
        resp = get_manifest(registry.url, repo, t.tag)
        if resp.status != 200:
            raise RuntimeError(f"pushed {repo}:{t.tag} but the upstream answers {resp.status}")
        media_type = resp.content_type.split(";")[0].strip()
        tags.append(PushedTag(repo, t.tag, resp.digest, media_type))
        for image in t.images:
            for k in image.layers:
                blobs.setdefault(layers[k].digest, Blob(repo, layers[k].digest, layers[k].size))
        for c in configs:
            blobs.setdefault(c.digest, Blob(repo, c.digest, c.size))
    return DataSet(spec.name, tuple(tags), tuple(blobs.values()))


def _widen(registry: Registry, base: DataSet, total_tags: int, repos: int) -> DataSet:
    """Give each wide repository ``total_tags / repos`` tags, each a distinct manifest."""
    tags: list[PushedTag] = []
    per_repo = max(1, total_tags // repos)
    for pushed in base.tags:
        resp = get_manifest(registry.url, pushed.repo, pushed.tag)
        doc = json.loads(resp.body)
        tags.append(pushed)
        for i in range(1, per_repo):
            tag = f"t{i:04d}"
            doc["annotations"] = {"org.registrish.bench.tag": tag}
            body = json.dumps(doc).encode()
            digest = put_manifest(registry.url, pushed.repo, tag, body, OCI_MANIFEST)
            tags.append(PushedTag(pushed.repo, tag, digest, OCI_MANIFEST))
    return DataSet(base.name, tuple(tags), base.blobs)


def ensure_data(
    registry: Registry, cache: Path, plan: Plan, *, log: Any = print, rebuild: bool = False
) -> Data:
    """Make sure ``registry`` (whose storage lives in ``cache``) holds every set of ``plan``.

    A cache built from the same plan is reused as is (no push); otherwise the registry's
    repositories are pushed again (the layout keeps the generated layers).
    """
    marker = cache / "pushed.json"
    wanted = plan.spec_hash()
    if not rebuild and marker.exists():
        data = Data.from_json(marker.read_text())
        if data.plan_hash == wanted and all(
            get_manifest(registry.url, t.repo, t.tag, method="HEAD").status == 200
            for s in data.sets.values()
            for t in s.tags[:1]
        ):
            return data
    log(f"building benchmark data (scale {plan.scale.name}) in {cache}")
    layout = cache / "layout"
    layers = _ensure_layers(layout, plan.layers, log)
    sets: dict[str, DataSet] = {}
    for name, spec in plan.sets.items():
        pushed = _push_set(registry, layout, spec, layers, log)
        if name == "wide":
            pushed = _widen(registry, pushed, plan.scale.wide_tags, plan.wide_repos)
        sets[name] = pushed
    data = Data(plan_hash=wanted, sets=sets)
    marker.write_text(data.to_json())
    return data


def registry_dir(cache: Path) -> Path:
    return cache / "registry"
