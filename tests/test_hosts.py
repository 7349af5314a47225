"""Host renderers: deterministic, not rewritten when unchanged, nginx size independent of
the tree, `_headers` parsed back and compared with the route table, host limits."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from support.hosts import context_for
from support.trees import BuiltTree, build_tree

from registrish_lock.console import Console
from registrish_lock.lock.config import parse_config
from registrish_lock.lock.lockfile import make_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.hosts import (
    RENDERERS,
    HostLimitError,
    write_host_configs,
)
from registrish_lock.serving.hosts.netlify import CLOUDFLARE_MAX_RULES, parse_headers, rule_matches
from registrish_lock.serving.routes import (
    EMPTY_REFERRERS,
    EMPTY_REFERRERS_REL,
    PING_DOCUMENT,
    Entry,
    Kind,
    Policy,
    entries,
    headers_for,
    read_objects,
)
from registrish_lock.tree.layout import Layout

ALL = ("nginx", "caddy", "apache", "netlify", "s3", "plain")


@pytest.fixture
def tree(tmp_path: Path) -> BuiltTree:
    return build_tree(tmp_path / "public")


def test_write_host_configs_is_idempotent(tmp_path: Path, tree: BuiltTree) -> None:
    config = parse_config(
        {"registry": {"root": "public", "hosts": list(ALL), "listen": "127.0.0.1:8088"}},
        tmp_path / "registrish.toml",
    )
    console = Console(verbosity=-1)
    first = write_host_configs(config, tree.layout, tree.lock, console)
    names = {p.name for p in first}
    assert {"registrish.conf", "Caddyfile", "registrish-apache.conf", ".htaccess"} <= names
    assert {"_headers", "_redirects", "s3-metadata.json", ".nojekyll"} <= names
    assert tree.layout.path(EMPTY_REFERRERS_REL).read_bytes() == EMPTY_REFERRERS
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    assert write_host_configs(config, tree.layout, tree.lock, console) == []
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes
    nginx = (tmp_path / "hosts" / "registrish.conf").read_text()
    assert f'root "{tree.layout.root.resolve()}";' in nginx
    assert "listen 127.0.0.1:8088;" in nginx
    assert "gzip off;" in nginx


def test_nginx_caddy_apache_grow_only_with_tags(tmp_path: Path, tree: BuiltTree) -> None:
    def sizes(lock_tags: int) -> dict[str, int]:
        lock = make_lock("x", tree.lock.tags[:lock_tags])
        ctx = context_for(tree, tmp_path, "nginx", "caddy", "apache", lock=lock)
        return {
            h: sum(len(o.data) for o in RENDERERS[h].render(ctx).outputs)
            for h in ("nginx", "caddy", "apache")
        }

    # only the tag -> digest table grows: one line per tag (two for nginx: the twin to
    # serve and the digest to send), nothing per manifest by digest or blob
    small, full = sizes(1), sizes(len(tree.lock.tags))
    extra_tags = len(tree.lock.tags) - 1
    for host, lines in (("nginx", 2), ("caddy", 1), ("apache", 1)):
        assert 0 < full[host] - small[host] <= 200 * lines * extra_tags, host


@pytest.mark.parametrize("host", ["netlify", "cloudflare"])
def test_headers_file_matches_the_route_table(tmp_path: Path, tree: BuiltTree, host: str) -> None:
    policy = Policy(tag_cache_seconds=60)
    ctx = context_for(tree, tmp_path, host, policy=policy)
    out = {o.path: o.data for o in RENDERERS[host].render(ctx).outputs}
    rules = parse_headers(out[ctx.root / "_headers"].decode())
    # Cloudflare reads `:` + a letter anywhere in a pattern as a placeholder
    assert not [p for p in rules if re.search(r":[A-Za-z]", p)]

    def matching(url: str) -> list[dict[str, str]]:
        return [h for pattern, h in rules.items() if rule_matches(pattern, url)]

    for entry in entries(read_objects(tree.layout, tree.lock), policy):
        url = "/" + entry.path
        found = matching(url)
        assert len(found) == 1, f"{url} is matched by {len(found)} rules"
        manifest = entry.kind.name.startswith("MANIFEST")
        expected = dict(
            headers_for(
                entry.kind,
                policy=policy,
                media_type=entry.content_type if manifest else None,
                # Cloudflare cannot promise the Content-Length docker wants beside it
                digest=entry.digest if manifest and host == "netlify" else None,
            )
        )
        assert found[0] == expected, url
    for url in ("/v2/", "/v2"):
        assert matching(url)[0]["Content-Type"] == "application/json"
    assert out[ctx.root / "v2/index.html"] == PING_DOCUMENT
    error = json.loads(out[ctx.root / "404.html"])
    assert error["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    redirects = out[ctx.root / "_redirects"].decode()
    assert (f"/v2/app-oci/referrers/* /{EMPTY_REFERRERS_REL} 200" in redirects) == (
        host == "netlify"
    )


def test_cloudflare_fails_loudly_past_100_rules(tmp_path: Path, tree: BuiltTree) -> None:
    ctx = context_for(tree, tmp_path, "cloudflare")
    small = RENDERERS["cloudflare"].render(ctx)
    assert len(parse_headers(small.outputs[0].data.decode())) < CLOUDFLARE_MAX_RULES
    many = ctx.entries + tuple(
        Entry(
            f"v2/x/manifests/t{i}", Kind.MANIFEST_TAG, (("Content-Type", mediatypes.OCI_MANIFEST),)
        )
        for i in range(CLOUDFLARE_MAX_RULES)
    )
    big = dataclasses.replace(ctx, entries=many)
    with pytest.raises(HostLimitError, match="allows 100") as info:
        RENDERERS["cloudflare"].render(big)
    assert info.value.hint is not None and "R2" in info.value.hint


def test_headers_refuse_overlapping_rules(tmp_path: Path, tree: BuiltTree) -> None:
    ctx = context_for(tree, tmp_path, "netlify")
    clash = (
        *ctx.entries,
        Entry(
            "v2/app-oci/blobs/manifests/v1",
            Kind.MANIFEST_TAG,
            (("Content-Type", mediatypes.OCI_MANIFEST),),
        ),
    )
    with pytest.raises(HostLimitError, match="would also match"):
        RENDERERS["netlify"].render(dataclasses.replace(ctx, entries=clash))


def test_s3_metadata_types_every_key(tmp_path: Path, tree: BuiltTree) -> None:
    ctx = context_for(tree, tmp_path, "s3")
    (out,) = RENDERERS["s3"].render(ctx).outputs
    objects = json.loads(out.data)["objects"]
    digest, media_type = tree.refs["multi-docker:v1"]
    assert objects["v2/multi-docker/manifests/v1"]["ContentType"] == media_type
    assert objects[f"v2/multi-docker/manifests/{digest}"]["CacheControl"].endswith("immutable")
    assert objects["v2/"]["Source"] == Layout.rel_ping()
    name, blob, _ = tree.blob
    assert objects[f"v2/{name}/blobs/{blob}"]["ContentType"] == "application/octet-stream"
    assert not any(".~" in key for key in objects)


def test_plain_warns_that_clients_cannot_pull(tmp_path: Path, tree: BuiltTree) -> None:
    ctx = context_for(tree, tmp_path, "plain")
    rendered = RENDERERS["plain"].render(ctx)
    assert any("cannot pull" in w for w in rendered.warnings)
    assert {o.path.name for o in rendered.outputs} == {".nojekyll", "index.html", "plain-host.txt"}
