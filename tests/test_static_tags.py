"""Static hosts and tags: `last`-keyed tag-list pages (written by sync, removed when stale,
swept and rewritten by gc, capped) and the tag -> digest tables of the host configs.
Sync/gc run on a fake upstream here; the real hosts are exercised in test_conformance.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import quiet
from support.fake_upstream import FakeUpstream, build_image, lock_of, locked
from support.sync import sync
from testbed.procs import require_binary

from registrish_lock.oci import mediatypes
from registrish_lock.serving.hosts import make_context, render_hosts
from registrish_lock.serving.hosts.apache import LISTEN, VHOST
from registrish_lock.serving.hosts.base import HostContext, TaggedDigest
from registrish_lock.serving.routes import Policy
from registrish_lock.tree.apply import collect_garbage
from registrish_lock.tree.desired import MAX_LAST_PAGES, last_pages
from registrish_lock.tree.layout import Layout, is_last_page


def _pages(root: Path, name: str) -> dict[str, list[str]]:
    tags_dir = Layout(root).repo_dir(name) / "tags"
    return {
        p.name.removesuffix(".~last"): json.loads(p.read_bytes())["tags"]
        for p in sorted(tags_dir.glob("*.~last"))
    }


def test_last_pages_list_the_tags_after_each_in_byte_order() -> None:
    pages = last_pages("app", ["b", "B", "a", "a-1", "10", "9"])
    order = ["10", "9", "B", "a", "a-1", "b"]  # byte-wise, not natural or case-folded
    assert set(pages) == {Layout.rel_tags_last("app", t) for t in order}
    for i, tag in enumerate(order):
        doc = json.loads(pages[Layout.rel_tags_last("app", tag)])
        assert doc == {"name": "app", "tags": order[i + 1 :]}


def test_last_pages_are_capped_and_bounded_per_tag() -> None:
    tags = [f"1.{i}.{j}" for i in range(10) for j in range(10)]  # 100 tags
    assert len(tags) == MAX_LAST_PAGES
    pages = last_pages("team/app", tags)
    total = sum(len(d) for d in pages.values())
    # about n²/2 tags of ~8 bytes: the figure quoted in the README
    assert 30_000 < total < 50_000, total
    # no page holds more than the cap's worth of names: O(1) bytes per tag
    assert max(len(d) for d in pages.values()) < 1_200
    assert last_pages("team/app", [*tags, "9.9.9"]) == {}


def test_sync_writes_pages_and_removes_those_of_gone_tags(tmp_path: Path) -> None:
    up = FakeUpstream()
    image = build_image(up, "app", "v1", seed="x")
    build_image(up, "app", "v2", seed="x")
    build_image(up, "app", "v3", seed="x")
    three = lock_of(*(locked("app", t, image) for t in ("v1", "v2", "v3")))
    sync(tmp_path, three, up)
    assert _pages(tmp_path, "app") == {"v1": ["v2", "v3"], "v2": ["v3"], "v3": []}
    again = sync(tmp_path, three, up)
    assert not again.plan.pending  # pages are part of the desired tree: no churn

    two = lock_of(*(locked("app", t, image) for t in ("v1", "v3")))
    result = sync(tmp_path, two, up)
    assert _pages(tmp_path, "app") == {"v1": ["v3"], "v3": []}
    assert [r.what for r in result.plan.removals].count("tags page") == 1


def test_gc_sweeps_pages_of_unlocked_tags_and_rewrites_the_rest(tmp_path: Path) -> None:
    up = FakeUpstream()
    image = build_image(up, "app", "v1", seed="x")
    tags = ("v1", "v2", "v3")
    sync(tmp_path, lock_of(*(locked("app", t, image) for t in tags)), up)
    layout = Layout(tmp_path)
    # the lock drops v2 but no sync ran: gc alone must not leave pages naming v2
    plan = collect_garbage(
        lock=lock_of(*(locked("app", t, image) for t in ("v1", "v3"))),
        layout=layout,
        console=quiet(),
        dry_run=False,
    )
    assert Layout.rel_tags_last("app", "v2") in {s.rel for s in plan.sweeps}
    assert _pages(tmp_path, "app") == {"v1": ["v3"], "v3": []}
    listing = json.loads(layout.path(Layout.rel_tags_list("app")).read_bytes())
    assert listing["tags"] == ["v1", "v3"]


def test_last_pages_are_never_routes() -> None:
    assert is_last_page("v2/a/b/tags/v1.~last")
    assert not is_last_page("v2/a/tags/list")
    assert not is_last_page("v2/a/manifests/v1.~oci-manifest")


def _ctx(tmp: Path, tags: list[TaggedDigest]) -> HostContext:
    return HostContext(
        root=tmp / "public",
        hosts_dir=tmp / "hosts",
        listen_host="127.0.0.1",
        listen_port=8080,
        policy=Policy(),
        tag_digests=tuple(sorted(tags)),
    )


def _digest(i: int) -> str:
    return "sha256:" + f"{i:064x}"


def test_configs_carry_one_digest_line_per_tag_and_none_per_digest(tmp_path: Path) -> None:
    tags = [TaggedDigest("team/app", f"v{i}", _digest(i), mediatypes.OCI_INDEX) for i in range(3)]

    def texts(table: list[TaggedDigest]) -> dict[str, str]:
        return {
            out.path.name: out.data.decode()
            for rendered in render_hosts(_ctx(tmp_path, table), ("nginx", "caddy", "apache"))
            for out in rendered.outputs
        }

    full, empty = texts(tags), texts([])
    nginx, caddy, vhost = full["registrish.conf"], full["Caddyfile"], full[VHOST]
    for _name, tag, digest, _type in tags:
        assert f'"team/app:{tag}" "{digest}.~oci-index";' in nginx
        assert f'"team/app:{tag}" "{digest}";' in nginx
        assert f"/v2/team/app/manifests/{tag} {digest} oci-index" in caddy
        assert f"/manifests/{tag}$" in vhost and f"REGISTRISH_TAG_DIGEST={digest}" in vhost
    for name in ("registrish.conf", "Caddyfile", VHOST, ".htaccess"):
        grown = full[name].count("sha256:") - empty[name].count("sha256:")
        per_tag = {".htaccess": 0, "registrish.conf": 2}.get(name, 1)  # nginx: twin + digest
        assert grown == per_tag * len(tags), name


def test_apache_listen_is_a_separate_file(tmp_path: Path) -> None:
    (rendered,) = render_hosts(_ctx(tmp_path, []), ("apache",))
    files = {out.path.name: out.data.decode() for out in rendered.outputs}
    assert "\nListen 127.0.0.1:8080\n" in files[LISTEN]
    assert not any(line.startswith("Listen") for line in files[VHOST].splitlines())


def test_make_context_takes_tag_digests_from_the_lock(tmp_path: Path) -> None:
    up = FakeUpstream()
    image = build_image(up, "app", "v1", seed="x")
    lock = lock_of(locked("app", "v1", image), locked("app", "latest", image))
    ctx = make_context(
        layout=Layout(tmp_path),
        hosts_dir=tmp_path,
        listen_host="127.0.0.1",
        listen_port=1,
        policy=Policy(),
        lock=lock,
        hosts=("nginx",),
    )
    assert ctx.tag_digests == (
        TaggedDigest("app", "latest", image.digest, image.media_type),
        TaggedDigest("app", "v1", image.digest, image.media_type),
    )


@pytest.mark.slow
def test_nginx_loads_a_config_with_10000_tags(tmp_path: Path) -> None:
    """The map grows with tags only; measure how long `nginx -t` takes to load it."""
    nginx = require_binary("nginx")
    tags = [
        TaggedDigest(f"team/app{i % 50}", f"1.{i}.0-long-suffix", _digest(i), mediatypes.OCI_INDEX)
        for i in range(10_000)
    ]
    (rendered,) = render_hosts(_ctx(tmp_path, tags), ("nginx",))
    (out,) = rendered.outputs
    out.path.parent.mkdir(parents=True)
    out.path.write_bytes(out.data)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log stderr warn;\nevents {{}}\n"
        f"http {{\n    include {out.path};\n}}\n"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [nginx, "-p", f"{tmp_path}/", "-c", str(conf), "-e", "stderr", "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "could not build" not in proc.stderr  # the hash sizing the renderer chose fits
    print(f"nginx -t with 10,000 tags: {seconds:.3f} s, config {len(out.data):,} bytes")
