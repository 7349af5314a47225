"""Referrers (signatures, attestations, SBOMs) and OCI artifacts: config, lock format,
discovery against the in-process fake registry (referrers API, OCI tag schema, cosign
tags), the static `referrers/<digest>` documents, serve's filter, check and gc.

The real-component version (docker-registry, skopeo, `registrish serve`) is
test_referrers_e2e.py."""

from __future__ import annotations

import io
import json
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.fake_registry import FakeRegistry

from registrish_lock.console import Console
from registrish_lock.errors import ConfigError, LockfileError
from registrish_lock.lock.config import Config, load_config
from registrish_lock.lock.lockfile import Lock, LockedReferrer, dumps, loads
from registrish_lock.lock.resolve import resolve
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import parse_manifest, sha256_digest
from registrish_lock.oci.reference import parse_reference
from registrish_lock.oci.referrers import (
    artifact_type_of,
    cosign_subject,
    cosign_tags,
    referrers_index,
    schema_tag,
)
from registrish_lock.progress import QuietProgress
from registrish_lock.serving.check import check_local, referrers_problems
from registrish_lock.serving.routes import EMPTY_REFERRERS, EMPTY_REFERRERS_REL
from registrish_lock.serving.serve import TreeResolver
from registrish_lock.tree.apply import LazyUpstream, collect_garbage, sync_tree
from registrish_lock.tree.layout import Layout
from registrish_lock.upstream.ratelimit import RetryPolicy
from registrish_lock.upstream.registry import RegistryClient

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
SIG_TYPE = "application/vnd.example.signature.v1+json"
SBOM_TYPE = "application/spdx+json"
COSIGN_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
REPO = "team/app"


def quiet() -> Console:
    return Console(verbosity=-1, out=io.StringIO(), err=io.StringIO())


def client(fake: FakeRegistry) -> RegistryClient:
    return RegistryClient(
        transport=fake.transport,
        retry=RetryPolicy(attempts=1),
        console=quiet(),
        sleep=lambda _s: None,
    )


def put_image(fake: FakeRegistry, tag: str, seed: int = 0) -> tuple[str, int]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer bytes {seed}".encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": fake.add_blob(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": fake.add_blob(layer), "size": len(layer)}],
    }
    data = json.dumps(doc).encode()
    return fake.add_manifest(REPO, tag, data), len(data)


def put_artifact(
    fake: FakeRegistry,
    payload: bytes,
    *,
    subject: tuple[str, int] | None,
    artifact_type: str | None = SIG_TYPE,
    layer_type: str = SIG_TYPE,
    config_type: str = EMPTY_TYPE,
    tag: str | None = None,
    annotations: dict[str, str] | None = None,
) -> str:
    """An artifact manifest: empty config, one layer, optional subject. Returns its digest."""
    config = b"{}"
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": fake.add_blob(config), "size": 2},
        "layers": [
            {"mediaType": layer_type, "digest": fake.add_blob(payload), "size": len(payload)}
        ],
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if subject is not None:
        doc["subject"] = {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": subject[0],
            "size": subject[1],
        }
    if annotations:
        doc["annotations"] = annotations
    data = json.dumps(doc).encode()
    digest = sha256_digest(data)
    return fake.add_manifest(REPO, tag or digest, data)


def write_config(
    tmp_path: Path, image_extra: str = "referrers = true", defaults: str = ""
) -> Config:
    text = '[registry]\nroot = "public"\n\n'
    if defaults:
        text += f"[defaults]\n{defaults}\n\n"
    text += f'[[image]]\nsource = "reg.test/{REPO}"\nname = "app"\ntags = ["v1"]\n{image_extra}\n'
    path = tmp_path / "registrish.toml"
    path.write_text(text)
    return load_config(path)


def lock_with(fake: FakeRegistry, config: Config, old: Lock | None = None) -> Lock:
    with client(fake) as c:
        return resolve(config, old, c, jobs=2, console=quiet()).lock


def sync(fake: FakeRegistry, lock: Lock, root: Path) -> None:
    sync_tree(
        lock=lock,
        layout=Layout(root),
        upstream=LazyUpstream(lambda: client(fake)),
        console=quiet(),
        progress=QuietProgress(),
    )
    # the catch-all `registrish hosts` writes (check_local wants it)
    (root / EMPTY_REFERRERS_REL).write_bytes(EMPTY_REFERRERS)


def referrers_doc(
    root: Path, digest: str, query: str = ""
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """What `registrish serve` answers for `referrers/<digest>` (in process)."""
    answer = TreeResolver(Layout(root)).answer("GET", f"/v2/app/referrers/{digest}{query}", {})
    doc: dict[str, Any] = json.loads(answer.body)
    return answer.status, dict(answer.headers), doc


# --- pure helpers ---------------------------------------------------------------------------
def test_tag_schemas_and_artifact_type() -> None:
    digest = "sha256:" + "ab" * 32
    assert cosign_tags(digest) == tuple(f"sha256-{'ab' * 32}.{s}" for s in ("sig", "att", "sbom"))
    assert schema_tag(digest) == "sha256-" + "ab" * 32
    assert [cosign_subject(t) for t in cosign_tags(digest)] == [digest] * 3
    assert cosign_subject("sha256-" + "ab" * 32) is None
    assert cosign_subject("v1.sig") is None
    fake = FakeRegistry()
    with_type = put_artifact(fake, b"x", subject=None)
    plain = put_artifact(fake, b"y", subject=None, artifact_type=None, config_type=CONFIG_TYPE)
    parse = {d: parse_manifest(fake.manifests[(REPO, d)][0]) for d in (with_type, plain)}
    # OCI 1.1: artifactType, else the config's media type
    assert artifact_type_of(parse[with_type]) == SIG_TYPE
    assert artifact_type_of(parse[plain]) == CONFIG_TYPE
    index = referrers_index(parse.values())
    assert [m["digest"] for m in index["manifests"]] == sorted(parse)
    assert index["mediaType"] == mediatypes.OCI_INDEX


def test_referrers_problems() -> None:
    listed = {"manifests": [{"digest": "sha256:" + "1" * 64, "artifactType": SIG_TYPE}]}
    doc = json.dumps({"schemaVersion": 2, **listed}).encode()
    assert referrers_problems(doc, {"sha256:" + "1" * 64: SIG_TYPE}) == []
    assert "artifactType" in referrers_problems(doc, {"sha256:" + "1" * 64: SBOM_TYPE})[0]
    assert "does not list" in referrers_problems(doc, {"sha256:" + "2" * 64: SIG_TYPE})[0]
    for bad in (b"[]", json.dumps(listed).encode(), b"<!doctype html><html></html>"):
        assert referrers_problems(bad, {}) == ["referrers document is not an OCI index"]


# --- config -----------------------------------------------------------------------------------
def test_config_referrers_option(tmp_path: Path) -> None:
    off = write_config(tmp_path, "")
    assert off.images[0].referrers is False
    explicit_off = write_config(tmp_path, "referrers = false")
    # off is the default and hashes like a config written before the option existed
    assert explicit_off.input_hash() == off.input_hash()
    on = write_config(tmp_path)
    assert on.images[0].referrers is True
    assert on.input_hash() != off.input_hash()
    by_default = write_config(tmp_path, "", defaults="referrers = true")
    assert by_default.images[0].referrers is True
    overridden = write_config(tmp_path, "referrers = false", defaults="referrers = true")
    assert overridden.images[0].referrers is False


@pytest.mark.parametrize(
    ("extra", "defaults", "message"),
    [
        ('referrers = "yes"', "", "image[0].referrers: must be true or false"),
        ("referrer = true", "", "did you mean 'referrers'?"),
        ("", "referrers = 1", "defaults.referrers: must be true or false"),
    ],
)
def test_config_referrers_errors(tmp_path: Path, extra: str, defaults: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, extra, defaults=defaults)
    assert message in f"{info.value.message} {info.value.hint}"


# --- registry client ---------------------------------------------------------------------------
def test_list_referrers_follows_pages_and_reports_missing_api() -> None:
    fake = FakeRegistry(referrers_api=True, referrers_page_size=1)
    subject = put_image(fake, "v1")
    a = put_artifact(fake, b"sig", subject=subject)
    b = put_artifact(fake, b"sbom", subject=subject, artifact_type=SBOM_TYPE, layer_type=SBOM_TYPE)
    repo = parse_reference(f"reg.test/{REPO}", allow_tag=False)
    with client(fake) as c:
        listed = c.list_referrers(repo, subject[0])
    assert listed is not None
    assert sorted((d.digest, d.artifact_type) for d in listed) == sorted(
        [(a, SIG_TYPE), (b, SBOM_TYPE)]
    )
    assert fake.count(path_contains="/referrers/") == 2  # two pages
    fake.referrers_api = False
    with client(fake) as c:
        assert c.list_referrers(repo, subject[0]) is None


# --- lock → sync → serve → check → gc, through the referrers API ------------------------------
def test_referrers_api_end_to_end_in_process(tmp_path: Path) -> None:
    fake = FakeRegistry(referrers_api=True)
    subject = put_image(fake, "v1")
    sig = put_artifact(
        fake, b"signature", subject=subject, annotations={"org.example.signer": "ci"}
    )
    sbom = put_artifact(
        fake, b'{"spdxVersion":"SPDX-2.3"}', subject=subject, artifact_type=SBOM_TYPE
    )
    # a signature of the SBOM: a referrer of a referrer
    sbom_size = len(fake.manifests[(REPO, sbom)][0])
    sbom_sig = put_artifact(fake, b"sbom signature", subject=(sbom, sbom_size))
    config = write_config(tmp_path)

    lock = lock_with(fake, config)
    (entry,) = lock.tags
    assert {(r.subject, r.digest, r.artifact_type) for r in entry.referrers} == {
        (subject[0], sig, SIG_TYPE),
        (subject[0], sbom, SBOM_TYPE),
        (sbom, sbom_sig, SIG_TYPE),
    }
    assert all(r.tag == "" for r in entry.referrers)
    text = dumps(lock)
    assert "[[tag.referrers]]" in text and 'artifact-type = "application/spdx+json"' in text
    assert loads(text, tmp_path / "x.lock") == lock  # strict round trip
    assert dumps(loads(text, tmp_path / "x.lock")) == text

    root = tmp_path / "public"
    sync(fake, lock, root)
    status, headers, doc = referrers_doc(root, subject[0])
    assert status == 200 and headers["Content-Type"] == mediatypes.OCI_INDEX
    listed = {m["digest"]: m for m in doc["manifests"]}
    assert set(listed) == {sig, sbom}
    assert listed[sig]["artifactType"] == SIG_TYPE
    assert listed[sig]["annotations"] == {"org.example.signer": "ci"}
    assert listed[sbom]["size"] == sbom_size
    _, _, nested = referrers_doc(root, sbom)
    assert [m["digest"] for m in nested["manifests"]] == [sbom_sig]
    # artifacts are mirrored like manifests, with their blobs
    for digest in (sig, sbom, sbom_sig):
        path = root / "v2" / "app" / "manifests" / digest
        assert path.read_bytes() == fake.manifests[(REPO, digest)][0]
        for blob in parse_manifest(path.read_bytes()).blobs:
            assert (root / "v2" / "app" / "blobs" / blob.digest).read_bytes() == fake.blobs[
                blob.digest
            ]

    # serve's ?artifactType= filter on the real document
    for query in (urllib.parse.urlencode({"artifactType": SBOM_TYPE}), f"artifactType={SBOM_TYPE}"):
        status, headers, filtered = referrers_doc(root, subject[0], f"?{query}")
        assert [m["digest"] for m in filtered["manifests"]] == [sbom], query
        assert headers["OCI-Filters-Applied"] == "artifactType"

    assert check_local(Layout(root), lock).failures == []
    # gc keeps everything the lock's referrers reach
    assert (
        collect_garbage(lock=lock, layout=Layout(root), console=quiet(), dry_run=True).sweeps == ()
    )

    # a document that lost an entry is reported
    rel = Layout.rel_referrers("app", subject[0])
    (root / rel).write_bytes(json.dumps({**doc, "manifests": [listed[sig]]}).encode())
    problems = [f.problem for f in check_local(Layout(root), lock).failures]
    assert problems == [f"does not list referrer {sbom} (run `registrish sync`)"]

    # dropping the option: the next sync + gc remove the artifacts and their documents
    plain = replace(lock, tags=(replace(entry, referrers=()),))
    sync(fake, plain, root)
    _, _, emptied = referrers_doc(root, subject[0])
    assert emptied["manifests"] == []
    gc = collect_garbage(lock=plain, layout=Layout(root), console=quiet(), dry_run=False)
    swept = {s.rel for s in gc.sweeps}
    assert Layout.rel_manifest("app", sig) in swept
    assert Layout.rel_referrers("app", sbom) in swept
    assert not (root / Layout.rel_manifest("app", sbom_sig)).exists()


def test_fallback_tag_schema_and_cosign_tags(tmp_path: Path) -> None:
    """No referrers API (like docker-registry 2.8): the OCI tag schema index and cosign tags."""
    fake = FakeRegistry(referrers_api=False)
    subject = put_image(fake, "v1")
    attached = put_artifact(fake, b"oras attach", subject=subject)
    stranger = put_artifact(fake, b"other subject", subject=("sha256:" + "0" * 64, 10))
    schema_index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mediatypes.OCI_MANIFEST,
                    "digest": d,
                    "size": len(fake.manifests[(REPO, d)][0]),
                }
                for d in (attached, stranger)
            ],
        }
    ).encode()
    fake.add_manifest(REPO, schema_tag(subject[0]), schema_index, mediatypes.OCI_INDEX)
    sig_tag = cosign_tags(subject[0])[0]
    cosign_sig = put_artifact(
        fake,
        b'{"critical":{}}',
        subject=None,
        artifact_type=None,
        config_type=CONFIG_TYPE,
        layer_type=COSIGN_LAYER,
        tag=sig_tag,
        annotations={"dev.cosignproject.cosign/signature": "MEUCIQ=="},
    )
    lock = lock_with(fake, write_config(tmp_path))
    (entry,) = lock.tags
    # the stranger (listed, but its subject is another manifest) is not trusted
    assert {(r.digest, r.tag) for r in entry.referrers} == {(attached, ""), (cosign_sig, sig_tag)}
    assert fake.count(path_contains=f"/manifests/{sig_tag}", method="HEAD") == 1

    root = tmp_path / "public"
    sync(fake, lock, root)
    # the cosign tag stays a tag; the artifact without a subject is in no referrers index
    tag_file = root / "v2" / "app" / "manifests" / sig_tag
    assert tag_file.read_bytes() == fake.manifests[(REPO, cosign_sig)][0]
    tags = json.loads((root / Layout.rel_tags_list("app")).read_bytes())["tags"]
    assert tags == sorted(["v1", sig_tag])
    _, _, doc = referrers_doc(root, subject[0])
    assert [m["digest"] for m in doc["manifests"]] == [attached]
    assert check_local(Layout(root), lock).failures == []
    answer = TreeResolver(Layout(root)).answer("HEAD", f"/v2/app/manifests/{sig_tag}", {})
    assert answer.status == 200
    assert dict(answer.headers)["Content-Type"] == mediatypes.OCI_MANIFEST

    # the cosign tag is kept by gc, and goes when the lock drops it
    assert (
        collect_garbage(lock=lock, layout=Layout(root), console=quiet(), dry_run=True).sweeps == ()
    )
    plain = replace(lock, tags=(replace(entry, referrers=()),))
    sync(fake, plain, root)
    assert not tag_file.exists()
    assert json.loads((root / Layout.rel_tags_list("app")).read_bytes())["tags"] == ["v1"]


def test_upgrade_finds_new_signatures_of_an_unchanged_digest(tmp_path: Path) -> None:
    fake = FakeRegistry(referrers_api=True)
    subject = put_image(fake, "v1")
    first = put_artifact(fake, b"first", subject=subject)
    config = write_config(tmp_path)
    lock = lock_with(fake, config)
    # keeping pins makes no request and keeps the referrers as they were
    fake.requests.clear()
    second = put_artifact(fake, b"second", subject=subject)
    assert lock_with(fake, config, lock) == lock
    assert fake.requests == []
    with client(fake) as c:
        result = resolve(config, lock, c, upgrade=set(), console=quiet())
    assert {r.digest for r in result.lock.tags[0].referrers} == {first, second}
    assert [(c.kind, c.tag) for c in result.changes] == [("referrers", "v1")]


def test_referrers_off_makes_no_referrer_requests(tmp_path: Path) -> None:
    fake = FakeRegistry(referrers_api=True)
    subject = put_image(fake, "v1")
    put_artifact(fake, b"sig", subject=subject)
    lock = lock_with(fake, write_config(tmp_path, ""))
    assert lock.tags[0].referrers == ()
    assert "referrers" not in dumps(lock)
    assert fake.count(path_contains="/referrers/") == 0
    assert fake.count(path_contains="sha256-") == 0


def test_source_without_referrer_support_is_a_config_error(tmp_path: Path) -> None:
    class NoReferrers:
        def list_tags(self, repo: object) -> list[str]:
            raise AssertionError

        def head_manifest(self, repo: object, ref: str) -> object:
            raise AssertionError

        def get_manifest(
            self, repo: object, ref: str, *, expected_digest: str | None = None
        ) -> object:
            raise AssertionError

    with pytest.raises(ConfigError, match=r"image\[0\]\.referrers: this source cannot list"):
        resolve(write_config(tmp_path), None, NoReferrers())  # type: ignore[arg-type]


# --- lock strictness ---------------------------------------------------------------------------
def _lock_text(referrer: str) -> str:
    digest = "sha256:" + "a" * 64
    return f"""version = 1
config-hash = "sha256:{"c" * 64}"

[inputs]

[[tag]]
name = "app"
tag = "v1"
source = "reg.test/team/app"
digest = "{digest}"
media-type = "{mediatypes.OCI_MANIFEST}"
size = 10
total-size = 10
platforms = []

[[tag.referrers]]
{referrer}
"""


GOOD_REFERRER = f'''subject = "sha256:{"a" * 64}"
digest = "sha256:{"b" * 64}"
media-type = "{mediatypes.OCI_MANIFEST}"
size = 5
artifact-type = "{SIG_TYPE}"
tag = "sha256-{"a" * 64}.sig"'''


def test_lock_loads_referrers() -> None:
    lock = loads(_lock_text(GOOD_REFERRER), Path("r.lock"))
    assert lock.tags[0].referrers == (
        LockedReferrer(
            subject="sha256:" + "a" * 64,
            digest="sha256:" + "b" * 64,
            media_type=mediatypes.OCI_MANIFEST,
            size=5,
            artifact_type=SIG_TYPE,
            tag=f"sha256-{'a' * 64}.sig",
        ),
    )


NO_TAG = GOOD_REFERRER.rsplit("\n", 1)[0]


@pytest.mark.parametrize(
    ("referrer", "problem"),
    [
        (
            NO_TAG.replace(f'subject = "sha256:{"a" * 64}"', f'subject = "sha256:{"d" * 64}"'),
            "none of this tag's",
        ),
        (
            GOOD_REFERRER.replace(f'tag = "sha256-{"a" * 64}.sig"', 'tag = "latest"'),
            "is not a cosign tag of",
        ),
        (
            GOOD_REFERRER.replace(f"sha256-{'a' * 64}.sig", f"sha256-{'e' * 64}.sig"),
            "is not a cosign tag",
        ),
        (GOOD_REFERRER.replace(f'"{SIG_TYPE}"', '"not a type"'), "invalid media type"),
        (GOOD_REFERRER.replace(f'"{mediatypes.OCI_MANIFEST}"', '"text/plain"'), "unsupported"),
        (GOOD_REFERRER.replace("size = 5", "size = -1"), "must not be negative"),
        (NO_TAG + "\n\n[[tag.referrers]]\n" + NO_TAG, "duplicate entries"),
    ],
)
def test_lock_rejects_bad_referrers(referrer: str, problem: str) -> None:
    assert referrer != GOOD_REFERRER
    with pytest.raises(LockfileError, match=problem):
        loads(_lock_text(referrer), Path("r.lock"))
