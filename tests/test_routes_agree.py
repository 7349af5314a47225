"""Every host answers each path kind of the route table with `headers_for()`'s headers.

One path (or several: each manifest kind, a stored and a catch-all referrers document) per
`Kind`, on the built tree with a non-default `tag_cache_seconds` (so a renderer that
hard-codes the default fails): what `serve`'s resolver answers, the `_headers` rule Netlify
and Cloudflare Pages apply, the S3 metadata `publish` reads, and (slow) what real nginx,
Caddy and Apache send with their generated configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.trees import BuiltTree, build_served_tree
from testbed.procs import LOOPBACK, free_port
from testbed.statichosts import start_generated

from registrish_lock.oci import mediatypes
from registrish_lock.serving.hosts import make_context, render_hosts, write_if_changed
from registrish_lock.serving.hosts.netlify import parse_headers, rule_matches
from registrish_lock.serving.routes import (
    BROWSE_DATA_DIR,
    BROWSE_REL,
    Kind,
    Policy,
    headers_for,
)
from registrish_lock.serving.serve import TreeResolver

POLICY = Policy(tag_cache_seconds=45)
DIGEST = "Docker-Content-Digest"
UNKNOWN = "sha256:" + "f" * 64
TABLE_HEADERS = ("Content-Type", "Cache-Control", DIGEST, "Docker-Distribution-API-Version")


@dataclass(frozen=True)
class Case:
    kind: Kind
    path: str  # URL path
    expected: dict[str, str]
    #: served by a fallback (the empty referrers catch-all): no per-object rule or key
    fallback: bool = False


def cases(tree: BuiltTree) -> list[Case]:
    def case(kind: Kind, path: str, mt: str | None = None, digest: str | None = None) -> Case:
        expected = dict(headers_for(kind, policy=POLICY, media_type=mt, digest=digest))
        return Case(kind, path, expected)

    found = [
        case(Kind.PING, "/v2/"),
        case(Kind.CATALOG, "/v2/_catalog"),
        case(Kind.TAGS_LIST, "/v2/app-oci/tags/list"),
        case(Kind.REFERRERS, f"/v2/app-oci/referrers/{tree.signed}"),
        case(Kind.BROWSE, "/" + BROWSE_REL),
    ]
    data = sorted((tree.layout.root / BROWSE_DATA_DIR).glob("*.json"))
    assert data, "the built tree has no browse data file"
    found.append(case(Kind.BROWSE_DATA, f"/{BROWSE_DATA_DIR}/{data[0].name}"))
    found.append(Case(Kind.REFERRERS, f"/v2/app-oci/referrers/{UNKNOWN}", found[3].expected, True))
    name, blob, _ = tree.blob
    found.append(case(Kind.BLOB, f"/v2/{name}/blobs/{blob}", digest=blob))
    for key in ("app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1"):
        repo, tag = key.split(":")
        digest, media_type = tree.refs[key]
        found.append(case(Kind.MANIFEST_TAG, f"/v2/{repo}/manifests/{tag}", media_type, digest))
        path = f"/v2/{repo}/manifests/{digest}"
        found.append(case(Kind.MANIFEST_DIGEST, path, media_type, digest))
    assert {c.kind for c in found} == set(Kind), "a path kind of the route table is not covered"
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    built = build_served_tree(tmp_path_factory.mktemp("agree") / "public")
    (built.layout.root / BROWSE_REL).write_text("<!doctype html><title>browse</title>\n")
    data = b'{"repository": "app-oci", "tags": []}\n'  # a data file, named by its digest
    data_dir = built.layout.root / BROWSE_DATA_DIR
    data_dir.mkdir(exist_ok=True)
    (data_dir / f"{hashlib.sha256(data).hexdigest()}.json").write_bytes(data)
    return built


def render(tree: BuiltTree, host: str, hosts_dir: Path, port: int = 8080) -> dict[Path, bytes]:
    ctx = make_context(
        layout=tree.layout,
        hosts_dir=hosts_dir,
        listen_host=LOOPBACK,
        listen_port=port,
        policy=POLICY,
        lock=tree.lock,
        hosts=(host,),
    )
    (rendered,) = render_hosts(ctx, (host,))
    return {out.path: out.data for out in rendered.outputs}


def assert_agrees(
    who: str,
    case: Case,
    sent: Mapping[str, str],
    expected: Mapping[str, str],
    *,
    partial: bool = False,
) -> None:
    """Each header the table decides is sent with the table's value, or not at all when
    the table sends none for that kind."""
    names = set(expected) if partial else TABLE_HEADERS
    got = {k: sent.get(k) for k in names}
    assert got == {k: expected.get(k) for k in names}, f"{who}: {case.kind.value} {case.path}"


def test_serve_resolver_agrees(tree: BuiltTree) -> None:
    resolver = TreeResolver(tree.layout, POLICY)
    for case in cases(tree):
        answer = resolver.answer("GET", case.path, {})
        assert answer.status == 200, case.path
        assert_agrees("serve", case, dict(answer.headers), case.expected)


@pytest.mark.parametrize("host", ["netlify", "cloudflare"])
def test_headers_file_agrees(tree: BuiltTree, tmp_path: Path, host: str) -> None:
    """The one `_headers` rule matching each path carries exactly the table's headers
    (Cloudflare's without Docker-Content-Digest: it cannot promise a Content-Length; blobs
    without it on both: one splat rule per repository covers them). The browse page has no
    rule: these hosts type `index.html` themselves."""
    outputs = render(tree, host, tmp_path)
    rules = parse_headers(outputs[tree.layout.root / "_headers"].decode())
    for case in cases(tree):
        if case.kind is Kind.BROWSE:
            continue
        matching = [
            headers for pattern, headers in rules.items() if rule_matches(pattern, case.path)
        ]
        assert len(matching) == 1, f"{host}: {case.path} matches {len(matching)} rules"
        expected = dict(case.expected)
        if host == "cloudflare" or case.kind is Kind.BLOB:
            expected.pop(DIGEST, None)
        assert matching[0] == expected, f"{host}: {case.kind.value} {case.path}"


def test_s3_metadata_agrees(tree: BuiltTree, tmp_path: Path) -> None:
    """Content-Type and Cache-Control of every key (S3 sends no other header of the table;
    it has no catch-all, and `publish` adds the browse page and its data files itself)."""
    outputs = render(tree, "s3", tmp_path)
    objects = json.loads(outputs[tmp_path / "s3-metadata.json"])["objects"]
    for case in cases(tree):
        if case.fallback or case.kind in (Kind.BROWSE, Kind.BROWSE_DATA):
            continue
        keys = ("v2/", "v2") if case.kind is Kind.PING else (case.path.lstrip("/"),)
        for key in keys:
            meta = objects[key]
            sent = {"Content-Type": meta["ContentType"], "Cache-Control": meta["CacheControl"]}
            expected = {k: v for k, v in case.expected.items() if k in sent}
            assert_agrees("s3", case, sent, expected, partial=True)


@pytest.fixture(scope="module", params=["nginx", "caddy", "apache"])
def served(
    request: pytest.FixtureRequest, tree: BuiltTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    host: str = request.param
    tmp = tmp_path_factory.mktemp(f"agree-{host}")
    port = free_port()
    for path, data in render(tree, host, tmp / "hosts", port).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(path, data)
    server = start_generated(host, tmp / "hosts", tmp, port=port)
    try:
        assert server.url is not None
        yield host, server.url
    finally:
        server.stop()


@pytest.mark.slow
def test_real_server_agrees(tree: BuiltTree, served: tuple[str, str]) -> None:
    """What the server really sends: every header of the table, with the table's value."""
    host, url = served
    with httpx.Client(base_url=url, timeout=30) as client:
        for case in cases(tree):
            r = client.get(case.path, headers={"Accept": mediatypes.ACCEPT})
            assert r.status_code == 200, f"{host}: {case.path}"
            sent = dict(r.headers)
            if host == "apache" and case.kind in (Kind.BROWSE, Kind.BROWSE_DATA):
                # The vhost sets the API version on every answer of the site (one rule, no
                # per-path condition): an extra header on the page and its data, harmless.
                sent.pop("docker-distribution-api-version")
            assert_agrees(host, case, httpx.Headers(sent), case.expected)
