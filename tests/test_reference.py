"""Reference grammar and docker-style normalisation, with property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrish_lock.errors import ReferenceError_
from registrish_lock.oci.reference import (
    Reference,
    default_target_name,
    is_digest,
    is_name,
    is_tag,
    parse_reference,
    validate_digest,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", Reference("docker.io", "library/alpine")),
        ("alpine:3.20", Reference("docker.io", "library/alpine", "3.20")),
        ("user/app", Reference("docker.io", "user/app")),
        ("docker.io/alpine", Reference("docker.io", "library/alpine")),
        ("index.docker.io/library/alpine", Reference("docker.io", "library/alpine")),
        ("registry-1.docker.io/library/alpine", Reference("docker.io", "library/alpine")),
        ("localhost/app", Reference("localhost", "app")),
        ("localhost:5000/a/b/c:v1", Reference("localhost:5000", "a/b/c", "v1")),
        ("127.0.0.1:5000/team/tools/app", Reference("127.0.0.1:5000", "team/tools/app")),
        ("ghcr.io/org/img@" + DIGEST, Reference("ghcr.io", "org/img", None, DIGEST)),
        ("ghcr.io/org/img:t@" + DIGEST, Reference("ghcr.io", "org/img", "t", DIGEST)),
    ],
)
def test_parse_normalises_like_docker(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_api_host_of_docker_hub() -> None:
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference("quay.io/a/b").api_host == "quay.io"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " alpine",
        "Alpine",  # upper case repository on Docker Hub
        "docker.io/Library/alpine",
        "a/../b",
        "../etc/passwd",
        "a//b",
        "alpine:",
        "alpine:.bad",
        "alpine@sha256:abc",
        "alpine@sha256:" + "A" * 64,
        "alpine@md5:" + "a" * 32,
        "host:99999999/app",
        "a b",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ReferenceError_):
        parse_reference(text)


def test_default_target_name_drops_library() -> None:
    assert default_target_name(parse_reference("alpine")) == "alpine"
    assert default_target_name(parse_reference("user/app")) == "user/app"
    assert default_target_name(parse_reference("127.0.0.1:5000/team/app")) == "team/app"


@pytest.mark.parametrize("bad", ["sha256:../../x", "sha256:" + "g" * 64, "sha512:" + "a" * 128])
def test_validate_digest_rejects_path_like(bad: str) -> None:
    with pytest.raises(ReferenceError_):
        validate_digest(bad)


_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_names = st.lists(_component, min_size=1, max_size=4).map("/".join)
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(name=_names, tag=_tags, port=st.integers(1, 65535))
def test_round_trip_with_registry(name: str, tag: str, port: int) -> None:
    ref = parse_reference(f"reg.example:{port}/{name}:{tag}")
    assert ref == Reference(f"reg.example:{port}", name, tag)
    assert parse_reference(str(ref)) == ref


# docker reads a first component holding '.' or ':' (or 'localhost') as a registry host.
_hub_first = st.from_regex(r"[a-z0-9]{1,8}([_-][a-z0-9]{1,8}){0,2}", fullmatch=True).filter(
    lambda c: c != "localhost"
)
_hub_names = st.tuples(_hub_first, st.lists(_component, max_size=3)).map(
    lambda t: "/".join([t[0], *t[1]])
)


@given(name=_hub_names)
def test_docker_hub_normalisation_is_idempotent(name: str) -> None:
    ref = parse_reference(name)
    assert ref.registry == "docker.io"
    assert parse_reference(str(ref)) == ref
    if "/" not in name:
        assert ref.repository == f"library/{name}"


@given(st.text(max_size=80))
def test_validators_never_accept_path_escapes(text: str) -> None:
    for check in (is_name, is_tag, is_digest):
        if check(text):
            assert ".." not in text.split("/")
            assert not text.startswith("/")
            assert "\\" not in text and "\x00" not in text
