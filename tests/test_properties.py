"""Property tests (hypothesis): references, config input hashes, lock round trips, and
manifest parsing of hostile bytes. Complements the grammar properties in test_reference.py."""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from registrish_lock.errors import IntegrityError, ReferenceError_
from registrish_lock.lock.config import parse_config
from registrish_lock.lock.lockfile import LockedManifest, LockedTag, dumps, loads, make_lock
from registrish_lock.oci import mediatypes
from registrish_lock.oci.manifest import parse_manifest
from registrish_lock.oci.reference import Reference, is_digest, is_name, is_tag, parse_reference

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
CONFIG = Path("/cfg/registrish.toml")

_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_names = st.lists(_component, min_size=1, max_size=3).map("/".join)
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,15}", fullmatch=True)
_digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
_hosts = st.one_of(
    st.just("localhost"),
    # a DNS label: letters, digits and inner hyphens (docker rejects a label ending in "-")
    st.from_regex(r"[a-z]([a-z0-9-]{0,7}[a-z0-9])?\.[a-z]{2,5}", fullmatch=True),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: f"10.0.{t[0]}.{t[1]}"),
)
_registries = st.tuples(_hosts, st.none() | st.integers(1, 65535)).map(
    lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}"
)


# -- references ------------------------------------------------------------------------------
@given(
    registry=_registries,
    name=_names,
    tag=st.none() | _tags,
    digest=st.none() | _digests,
)
def test_reference_round_trips_with_digests(
    registry: str, name: str, tag: str | None, digest: str | None
) -> None:
    text = f"{registry}/{name}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert ref == Reference(registry, name, tag, digest)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@given(st.text(max_size=120))
def test_parse_reference_only_raises_reference_errors_and_yields_safe_parts(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ReferenceError_:
        return
    # Whatever is accepted can become a path: every part is inside its grammar.
    assert is_name(ref.repository)
    assert ref.tag is None or is_tag(ref.tag)
    assert ref.digest is None or is_digest(ref.digest)
    assert ".." not in ref.repository.split("/")


# -- config input hash -----------------------------------------------------------------------
_images = st.lists(
    st.fixed_dictionaries(
        {"tags": st.lists(_tags, min_size=1, max_size=4)},
        optional={
            "versions": st.sampled_from([">=1", ">=3.18,<4", "~=2.1", "==1.*"]),
            "platforms": st.lists(
                st.sampled_from(["linux/amd64", "linux/arm64", "linux/arm/v7", "windows/amd64"]),
                min_size=1,
                max_size=3,
            ),
        },
    ),
    min_size=1,
    max_size=4,
)


def _shuffled(doc: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    """The same table with its keys in another insertion order (so another TOML order)."""
    items = list(doc.items())
    rnd.shuffle(items)
    return dict(items)


def _config_doc(images: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "registry": {"root": "public", "hosts": ["nginx"]},
        "image": [
            {"source": f"reg.example/team/app{i}", **image} for i, image in enumerate(images)
        ],
    }


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(images=_images, seed=st.integers(0, 2**32 - 1))
def test_config_input_hash_ignores_key_image_and_list_order(
    images: list[dict[str, Any]], seed: int
) -> None:
    rnd = random.Random(seed)
    doc = _config_doc(images)
    reordered = _shuffled(
        {
            "image": [
                _shuffled(
                    {
                        k: (rnd.sample(v, len(v)) + v[:1] if k == "tags" else v)  # order, dupes
                        for k, v in image.items()
                    },
                    rnd,
                )
                for image in rnd.sample(doc["image"], len(doc["image"]))
            ],
            "registry": _shuffled(doc["registry"], rnd),
        },
        rnd,
    )
    first = parse_config(_toml(doc), CONFIG)
    second = parse_config(_toml(reordered), CONFIG)
    assert first.input_hash() == second.input_hash()
    # Hosts and root are not resolution inputs either.
    other_hosts = dict(doc, registry={"root": "elsewhere", "hosts": ["caddy", "s3"]})
    assert parse_config(_toml(other_hosts), CONFIG).input_hash() == first.input_hash()


@given(images=_images, extra=_tags)
def test_config_input_hash_changes_with_the_selection(
    images: list[dict[str, Any]], extra: str
) -> None:
    assume(extra not in images[0]["tags"])
    doc = _config_doc(images)
    changed = _config_doc([{**images[0], "tags": [*images[0]["tags"], extra]}, *images[1:]])
    assert parse_config(_toml(doc), CONFIG).input_hash() != (
        parse_config(_toml(changed), CONFIG).input_hash()
    )


def _toml(doc: dict[str, Any]) -> dict[str, Any]:
    """Through real TOML text and back, as load_config would see it."""
    parsed: dict[str, Any] = tomllib.loads(tomli_w.dumps(doc))
    return parsed


# -- lock round trip -------------------------------------------------------------------------
_platforms = st.builds(
    lambda os_, arch, variant: "/".join(x for x in (os_, arch, variant) if x),
    st.sampled_from(["linux", "windows", "freebsd", "unknown"]),
    st.sampled_from(["amd64", "arm64", "arm", "s390x", "unknown"]),
    st.none() | st.sampled_from(["v5", "v6", "v7", "v8"]),
)
_children = st.lists(
    st.builds(
        LockedManifest,
        platform=_platforms,
        digest=_digests,
        media_type=st.sampled_from(sorted(mediatypes.IMAGE_TYPES)),
        size=st.integers(0, 2**40),
    ),
    max_size=4,
    unique_by=lambda m: m.platform,
)


@st.composite
def _locked_tags(draw: st.DrawFn) -> LockedTag:
    media_type = draw(st.sampled_from(sorted(mediatypes.MANIFEST_TYPES)))
    return LockedTag(
        name=draw(_names),
        tag=draw(_tags),
        source=draw(_registries) + "/" + draw(_names),
        digest=draw(_digests),
        media_type=media_type,
        size=draw(st.integers(0, 4 * 1024 * 1024)),
        total_size=draw(st.integers(0, 2**50)),
        platforms=tuple(sorted(draw(_children))) if mediatypes.is_index(media_type) else (),
    )


@settings(max_examples=50)
@given(
    tags=st.lists(_locked_tags(), max_size=6, unique_by=lambda t: t.key),
    config_hash=_digests,
    seed=st.integers(0, 2**32 - 1),
)
def test_lock_dumps_loads_round_trip(tags: list[LockedTag], config_hash: str, seed: int) -> None:
    inputs = {t.name: config_hash for t in tags}
    lock = make_lock(config_hash, tags, inputs)
    text = dumps(lock)
    assert loads(text, Path("registrish.lock")) == lock
    # Deterministic: the same set in any order gives the same bytes (diff-friendly).
    shuffled = random.Random(seed).sample(tags, len(tags))
    assert dumps(make_lock(config_hash, shuffled, dict(reversed(list(inputs.items()))))) == text


# -- parse_manifest on hostile input ---------------------------------------------------------
@given(st.binary(max_size=2048))
def test_parse_manifest_raises_only_integrity_errors_on_arbitrary_bytes(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except IntegrityError as exc:  # anything else (KeyError, TypeError …) fails the test
        assert exc.message and "\n" not in exc.message
    else:
        assert manifest.digest == "sha256:" + hashlib.sha256(data).hexdigest()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
_digest_like = st.one_of(
    _digests,
    st.text(max_size=80),
    st.from_regex(r"sha256:[a-fA-F0-9./]{1,70}", fullmatch=True),
    st.from_regex(r"(sha512|md5|SHA256|sha256 ):[a-f0-9]{64}", fullmatch=True),
    st.just("sha256:../../x"),
    _json,
)
_descriptors = st.fixed_dictionaries(
    {
        "mediaType": st.sampled_from(["application/octet-stream", "a/b\n", "x"]) | _json,
        "digest": _digest_like,
        "size": st.integers(-5, 2**40) | _json,
    },
    optional={"platform": _json, "urls": _json, "annotations": _json},
)


@settings(max_examples=60)
@given(
    kind=st.sampled_from(sorted(mediatypes.MANIFEST_TYPES)),
    descriptors=st.lists(_descriptors, max_size=4),
    config=_descriptors,
    extra=st.dictionaries(st.text(max_size=10), _json, max_size=3),
    declare_type=st.booleans(),
)
def test_parse_manifest_fuzzed_documents_yield_only_valid_descriptors(
    kind: str,
    descriptors: list[dict[str, Any]],
    config: dict[str, Any],
    extra: dict[str, Any],
    declare_type: bool,
) -> None:
    doc: dict[str, Any] = {**extra, "schemaVersion": 2}
    if declare_type:
        doc["mediaType"] = kind
    if mediatypes.is_index(kind):
        doc["manifests"] = descriptors
    else:
        doc["config"], doc["layers"] = config, descriptors
    data = json.dumps(doc).encode()
    try:
        manifest = parse_manifest(data, content_type=kind)
    except IntegrityError:
        return
    for d in (*manifest.children, *manifest.blobs, *filter(None, [manifest.subject])):
        assert DIGEST_RE.fullmatch(d.digest), d.digest
        assert isinstance(d.size, int) and d.size >= 0
        assert "\n" not in d.media_type
    assert manifest.digest not in {c.digest for c in manifest.children}


_valid_descriptors = st.fixed_dictionaries(
    {
        "mediaType": st.sampled_from(
            ["application/vnd.oci.image.layer.v1.tar+gzip", "application/octet-stream"]
        ),
        "digest": _digests,
        "size": st.integers(0, 2**40),
    }
)
_bad_digests = _digest_like.filter(lambda d: not (isinstance(d, str) and DIGEST_RE.fullmatch(d)))


@given(
    kind=st.sampled_from(sorted(mediatypes.MANIFEST_TYPES)),
    descriptors=st.lists(_valid_descriptors, min_size=2, max_size=5),
    bad=st.none() | st.tuples(st.integers(0, 4), _bad_digests),
)
def test_parse_manifest_refuses_exactly_the_documents_with_a_bad_digest(
    kind: str, descriptors: list[dict[str, Any]], bad: tuple[int, Any] | None
) -> None:
    if bad is not None:
        position, digest = bad
        descriptors[position % len(descriptors)]["digest"] = digest
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": kind}
    if mediatypes.is_index(kind):
        doc["manifests"] = descriptors
    else:
        doc["config"], doc["layers"] = descriptors[0], descriptors[1:]
    data = json.dumps(doc).encode()
    if bad is not None:
        with pytest.raises(IntegrityError, match="descriptor digest"):
            parse_manifest(data)
        return
    manifest = parse_manifest(data)
    got = manifest.children if manifest.is_index else manifest.blobs
    assert [d.digest for d in got] == [d["digest"] for d in descriptors]
    assert [d.size for d in got] == [d["size"] for d in descriptors]
