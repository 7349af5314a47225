"""Signatures, attestations, SBOMs and OCI artifacts end to end, against the real
docker-registry upstream (tests/testbed): artifacts are pushed as small JSON manifests
with blobs uploaded through the registry API, then `registrish lock` → `sync` → `serve`,
and the result is fetched the way cosign/oras do (plain HTTP + exact Content-Type),
copied with skopeo, and proven with `registrish check`.

docker-registry 2.8 has no referrers API, so the plain upstream exercises the fallbacks
(OCI referrers tag schema, cosign tags); a CountingProxy fault hook plays a registry that
has the API. Every repository here is this module's own (`ref-*`): the seeded ones are
shared and never touched."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from testbed.clients import skopeo_copy
from testbed.images import PushedRef, push_random_image
from testbed.registrish import registrish
from testbed.upstream import (
    OCI_INDEX,
    OCI_MANIFEST,
    CountingProxy,
    Registry,
    Respond,
    get_manifest,
    push_blob,
    put_manifest,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.slow

SIG_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SBOM_TYPE = "application/spdx+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
COSIGN_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def write_config(tmp: Path, host: str, images: list[tuple[str, str, str]]) -> Path:
    """images: (upstream repository, our name, tag); all with `referrers = true`."""
    text = '[registry]\nroot = "public"\n\n[defaults]\nreferrers = true\n\n'
    for source, name, tag in images:
        text += f'[[image]]\nsource = "{host}/{source}"\nname = "{name}"\ntags = ["{tag}"]\n\n'
    text += f'[registries."{host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    return config


# --- building artifacts in the upstream --------------------------------------------------------
@dataclass(frozen=True)
class Pushed:
    digest: str
    data: bytes
    blobs: dict[str, bytes]


def push_artifact(
    registry: Registry,
    name: str,
    *,
    layers: list[tuple[str, bytes]],
    config: tuple[str, bytes] = (EMPTY_TYPE, b"{}"),
    artifact_type: str | None = None,
    subject: PushedRef | None = None,
    annotations: dict[str, str] | None = None,
    tag: str | None = None,
) -> Pushed:
    """An OCI image manifest used as an artifact, pushed byte-exact (by tag or digest)."""
    blobs = {}
    descriptors = []
    for media_type, data in [config, *layers]:
        desc = push_blob(registry.url, name, data)
        blobs[str(desc["digest"])] = data
        descriptors.append({"mediaType": media_type, **desc})
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        }
    if annotations:
        doc["annotations"] = annotations
    data = json.dumps(doc, indent=2).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put_manifest(registry.url, name, tag or digest, data, OCI_MANIFEST)
    return Pushed(digest, data, blobs)


def push_schema_index(registry: Registry, name: str, subject: str, referrers: list[Pushed]) -> None:
    """What oras does against a registry without the referrers API: an index tagged
    `sha256-<hex>` listing the referrers."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": r.digest,
                "size": len(r.data),
                "artifactType": json.loads(r.data).get("artifactType", EMPTY_TYPE),
            }
            for r in referrers
        ],
    }
    put_manifest(
        registry.url, name, "sha256-" + subject.split(":")[1], json.dumps(doc).encode(), OCI_INDEX
    )


def signature(registry: Registry, name: str, subject: PushedRef, text: str) -> Pushed:
    return push_artifact(
        registry,
        name,
        layers=[(SIG_TYPE, json.dumps({"signature": text}).encode())],
        artifact_type=SIG_TYPE,
        subject=subject,
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "signer": text},
    )


def fetch_referrers(base: str, name: str, digest: str, **params: str) -> httpx.Response:
    """As cosign (go-containerregistry) and oras-go fetch it: GET with the index Accept."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    return httpx.get(
        f"http://{base}/v2/{name}/referrers/{digest}{query}", headers={"Accept": OCI_INDEX}
    )


def read_lock(config: Path) -> dict[str, Any]:
    return tomllib.loads(config.with_suffix(".lock").read_text())


# --- the fallbacks: docker-registry 2.8 as it is --------------------------------------------------
def test_signatures_via_tag_schemas_lock_sync_serve_check(
    upstream_registry: Registry,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
) -> None:
    name = "ref-fallback/app"
    image = push_random_image(upstream_registry, name, "v1", (2048,), seed=81, workdir=tmp_path)
    # (a) an OCI 1.1 signature with `subject`, found through the referrers tag schema
    sig = signature(upstream_registry, name, image, "ci")
    sbom = push_artifact(
        upstream_registry,
        name,
        layers=[(SBOM_TYPE, b'{"spdxVersion":"SPDX-2.3","name":"app"}')],
        artifact_type=SBOM_TYPE,
        subject=image,
    )
    push_schema_index(upstream_registry, name, image.digest, [sig, sbom])
    # (b) a cosign-style signature: tag `sha256-<hex>.sig`, no subject
    sig_tag = f"sha256-{image.digest.split(':')[1]}.sig"
    cosign = push_artifact(
        upstream_registry,
        name,
        config=(
            "application/vnd.oci.image.config.v1+json",
            b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}',
        ),
        layers=[(COSIGN_LAYER, b'{"critical":{"type":"cosign container image signature"}}')],
        annotations={"dev.cosignproject.cosign/signature": "MEUCIQDtest"},
        tag=sig_tag,
    )

    config = write_config(tmp_path, counting_proxy.host, [(name, "app", "v1")])
    registrish(config, "lock")
    (entry,) = read_lock(config)["tag"]
    assert sorted((r["digest"], r.get("tag", "")) for r in entry["referrers"]) == sorted(
        [(sig.digest, ""), (sbom.digest, ""), (cosign.digest, sig_tag)]
    )
    assert {r["subject"] for r in entry["referrers"]} == {image.digest}
    # the fallbacks were used: the API answered 404, the schema tag and cosign tags were asked
    assert counting_proxy.count("GET", f"/referrers/{image.digest}") == 1
    assert counting_proxy.count("GET", f"/manifests/sha256-{image.digest.split(':')[1]}") == 1
    assert counting_proxy.count("HEAD", f"/manifests/{sig_tag}") == 1

    registrish(config, "sync")
    base = serve_tree(tmp_path / "public")

    resp = fetch_referrers(base, "app", image.digest)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == OCI_INDEX  # exactly: no charset
    doc = resp.json()
    assert doc["mediaType"] == OCI_INDEX and doc["schemaVersion"] == 2
    listed = {m["digest"]: m for m in doc["manifests"]}
    assert set(listed) == {sig.digest, sbom.digest}  # the cosign .sig has no subject
    assert listed[sig.digest] == {
        "mediaType": OCI_MANIFEST,
        "digest": sig.digest,
        "size": len(sig.data),
        "artifactType": SIG_TYPE,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "signer": "ci"},
    }
    # ?artifactType= filtering on serve, with real data
    only_sbom = fetch_referrers(base, "app", image.digest, artifactType=SBOM_TYPE)
    assert [m["digest"] for m in only_sbom.json()["manifests"]] == [sbom.digest]
    assert only_sbom.headers["oci-filters-applied"] == "artifactType"
    none = fetch_referrers(base, "app", image.digest, artifactType="application/x-none")
    assert none.json()["manifests"] == []
    # every artifact manifest has its own (empty) referrers document
    assert fetch_referrers(base, "app", sig.digest).json()["manifests"] == []

    # skopeo copies the signature by digest and the cosign tag, byte-exact
    by_digest = skopeo_copy(f"{base}/app@{sig.digest}", tmp_path / "sig")
    assert by_digest.digest == sig.digest
    assert (tmp_path / "sig" / "manifest.json").read_bytes() == sig.data
    by_tag = skopeo_copy(f"{base}/app:{sig_tag}", tmp_path / "cosign")
    assert by_tag.digest == cosign.digest
    for digest, data in cosign.blobs.items():
        assert (tmp_path / "cosign" / digest.split(":")[1]).read_bytes() == data
    tags = httpx.get(f"http://{base}/v2/app/tags/list").json()["tags"]
    assert tags == sorted(["v1", sig_tag])

    assert registrish(config, "check", f"http://{base}", "--deep").returncode == 0
    assert registrish(config, "check", "--local").returncode == 0
    gc = registrish(config, "gc", "--dry-run", "--json")
    assert json.loads(gc.stdout)["remove"] == []


# --- the referrers API: a registry that has it (the proxy answers for docker-registry) --------------
def test_signatures_via_referrers_api(
    upstream_registry: Registry,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
) -> None:
    name = "ref-api/app"
    image = push_random_image(upstream_registry, name, "v1", (1024,), seed=82, workdir=tmp_path)
    sig = signature(upstream_registry, name, image, "release")
    prepared = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sig.digest,
                    "size": len(sig.data),
                    "artifactType": SIG_TYPE,
                }
            ],
        }
    ).encode()
    empty = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()

    def referrers_api(method: str, path: str) -> Respond | None:
        if "/referrers/" not in path:
            return None
        body = prepared if path.endswith(image.digest) else empty
        return Respond(200, body, {"Content-Type": OCI_INDEX})

    with CountingProxy(upstream_registry.url, fault=referrers_api) as proxy:
        config = write_config(tmp_path, proxy.host, [(name, "app", "v1")])
        registrish(config, "lock")
        # the API answered: the OCI tag schema was not needed (cosign tags are HEADed)
        assert proxy.count("GET", f"/referrers/{image.digest}") == 1
        assert proxy.count("GET", f"/manifests/sha256-{image.digest.split(':')[1]}") == 0
        assert proxy.count("HEAD", f"/manifests/sha256-{image.digest.split(':')[1]}.") == 3
        (entry,) = read_lock(config)["tag"]
        assert [(r["digest"], r["artifact-type"]) for r in entry["referrers"]] == [
            (sig.digest, SIG_TYPE)
        ]
        registrish(config, "sync")
    base = serve_tree(tmp_path / "public")
    resp = fetch_referrers(base, "app", image.digest)
    assert resp.headers["content-type"] == OCI_INDEX
    assert [m["digest"] for m in resp.json()["manifests"]] == [sig.digest]
    assert registrish(config, "check", f"http://{base}").returncode == 0


# --- OCI artifacts other than images pass through untouched ------------------------------------
def _chart_tgz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        chart = b"apiVersion: v2\nname: demo\nversion: 0.1.0\n"
        info = tarfile.TarInfo("demo/Chart.yaml")
        info.size, info.mtime = len(chart), 0
        tar.addfile(info, io.BytesIO(chart))
    return gzip.compress(buf.getvalue(), mtime=0)


def test_helm_chart_and_generic_artifact_round_trip(
    upstream_registry: Registry,
    counting_proxy: CountingProxy,
    tmp_path: Path,
    serve_tree: Callable[[Path], str],
) -> None:
    chart = push_artifact(
        upstream_registry,
        "ref-charts/demo",
        config=(HELM_CONFIG, b'{"apiVersion":"v2","name":"demo","version":"0.1.0"}'),
        layers=[(HELM_LAYER, _chart_tgz())],
        tag="0.1.0",
    )
    generic = push_artifact(
        upstream_registry,
        "ref-artifacts/data",
        artifact_type="application/vnd.example.dataset.v1",
        layers=[
            ("application/vnd.example.dataset.part.v1", b"part one " * 100),
            ("text/csv", b"a,b\n1,2\n"),
        ],
        annotations={"org.opencontainers.image.title": "dataset"},
        tag="2024.1",
    )
    config = write_config(
        tmp_path,
        counting_proxy.host,
        [("ref-charts/demo", "charts/demo", "0.1.0"), ("ref-artifacts/data", "data", "2024.1")],
    )
    registrish(config, "lock")
    registrish(config, "sync")
    base = serve_tree(tmp_path / "public")
    for name, tag, pushed in (("charts/demo", "0.1.0", chart), ("data", "2024.1", generic)):
        for ref in (tag, pushed.digest):
            got = get_manifest(f"http://{base}", name, ref)
            assert got.status == 200
            assert got.content_type == OCI_MANIFEST
            assert got.body == pushed.data  # byte-identical, so the digest is the upstream's
            assert got.headers["docker-content-digest"] == pushed.digest
        for digest, data in pushed.blobs.items():
            blob = httpx.get(f"http://{base}/v2/{name}/blobs/{digest}")
            assert blob.status_code == 200 and blob.content == data
            assert "content-encoding" not in blob.headers
    # a client that knows nothing about Helm copies the chart as it is
    copied = skopeo_copy(f"{base}/charts/demo:0.1.0", tmp_path / "chart")
    assert copied.digest == chart.digest
    assert (tmp_path / "chart" / "manifest.json").read_bytes() == chart.data
    assert registrish(config, "check", f"http://{base}", "--deep").returncode == 0
