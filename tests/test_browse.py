"""The browse page and its per-repository data files: content, escaping, determinism, size
at 100,000 tags, and how they are wired in (written by the host-config step, served by
`serve`, kept by gc)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html.parser
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from support.locks import hostile_lock_and_bytes
from support.trees import BuiltTree, build_tree
from testbed.browsesite import assert_site_served

from registrish_lock.console import Console
from registrish_lock.lock.config import parse_config
from registrish_lock.lock.lockfile import LockedTag, make_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.browse import BrowseModel, model_from, read_model
from registrish_lock.serving.browse_page import (
    OPEN_ALL_TAGS,
    BrowseSite,
    current_data_files,
    render_page,
    render_site,
    render_tree_site,
    write_site,
)
from registrish_lock.serving.hosts import write_host_configs
from registrish_lock.serving.routes import (
    BROWSE_DATA_DIR,
    BROWSE_REL,
    Kind,
    Target,
    browse_data_rel,
    classify,
)
from registrish_lock.serving.serve import TreeResolver
from registrish_lock.tree.apply import collect_garbage
from registrish_lock.tree.layout import Layout


class _Page(html.parser.HTMLParser):
    """Collects what the tests look at: elements (with attributes), text, script bodies."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for t, attrs in self.elements if t == tag]


def parse(page: bytes) -> _Page:
    parser = _Page()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return parser


@pytest.fixture
def tree(tmp_path: Path) -> BuiltTree:
    return build_tree(tmp_path / "public")


def tags_of(site: BrowseSite) -> dict[str, list[list[Any]]]:
    """Repository name → the rows of its data file."""
    docs = [json.loads(data) for data in site.data.values()]
    return {doc["name"]: doc["tags"] for doc in docs}


def test_page_lists_repositories_and_data_files_hold_tags_platforms_sizes(
    tree: BuiltTree,
) -> None:
    site = render_tree_site(tree.layout, tree.lock)
    doc = parse(site.page)
    text = "".join(doc.text)
    sections = doc.all("section")
    assert [a["data-name"] for a in sections] == tree.lock.names()
    assert len(doc.all("h2")) == 5
    for name in tree.lock.names():
        assert f"{name} from 127.0.0.1:5000/{name}" in text
    # each section names its data file, which is named by the sha256 of its bytes
    assert sorted(a["data-src"] for a in sections) == sorted(site.data)
    for rel, data in site.data.items():
        assert rel == browse_data_rel(hashlib.sha256(data).hexdigest())
        assert classify(rel) == Target(Kind.BROWSE_DATA, ref=rel[7:-5])
    counts = {a["data-name"]: int(a["data-tags"]) for a in sections}
    assert counts == {n: sum(1 for t in tree.lock.tags if t.name == n) for n in counts}
    # a small registry: every section starts open (its data fetched at load)
    assert all("open" in attrs for attrs in doc.all("details"))
    rows = tags_of(site)
    for tag in tree.lock.tags:
        (row,) = [r for r in rows[tag.name] if r[0] == tag.tag]
        assert row[1:5] == [tag.digest, tag.media_type, tag.platforms != (), tag.total_size]
    assert [r[0] for r in rows["app-oci"]] == ["v2", "v1", "latest"]  # newest first
    # index tags list their locked platforms with the image's own download size
    multi = read_model(tree.layout, tree.lock)
    facts = {t.name + ":" + t.tag: t for _, tags in multi.repositories for t in tags}
    plats = facts["multi:v1"].platforms
    assert [p.platform for p in plats] == ["linux/amd64", "linux/arm64"]
    for p in plats:
        data = tree.layout.path(Layout.rel_manifest("multi", p.digest)).read_bytes()
        manifest = json.loads(data)
        expected = len(data) + manifest["config"]["size"] + manifest["layers"][0]["size"]
        assert (p.size, p.layers) == (expected, 1)
    assert rows["multi"][0][6] == [[p.platform, p.digest, p.size, p.layers] for p in plats]
    # a single-manifest tag gets its platform from the image config in the tree
    assert [p.platform for p in facts["app-docker:v1"].platforms] == ["linux/amd64"]
    # copy buttons and rows only work with JavaScript, so the script builds them
    assert not doc.all("tr")
    (label,) = doc.all("label")
    assert label["for"] == "q" and any(a.get("id") == "q" for a in doc.all("input"))


def test_no_external_assets_and_csp_hashes_match_the_inline_code(tree: BuiltTree) -> None:
    site = render_tree_site(tree.layout, tree.lock)
    page = site.page
    doc = parse(page)
    assert not any("src" in attrs for _, attrs in doc.elements), "no asset may be loaded"
    assert not re.search(rb"https?://", page)
    # the only links: each repository's data file, for readers without JavaScript
    assert sorted(a["href"] for a in doc.all("a")) == sorted(site.data)
    (script,) = doc.scripts
    (style,) = doc.styles
    (csp,) = [a["content"] for a in doc.all("meta") if a.get("http-equiv")]

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert f"script-src {digest(script)};" in csp
    assert f"style-src {digest(style)};" in csp
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp  # the data files, from the page's own origin


def test_deterministic_and_only_changed_files_rewritten(tmp_path: Path, tree: BuiltTree) -> None:
    first = render_tree_site(tree.layout, tree.lock)
    assert first == render_tree_site(tree.layout, tree.lock)
    # a copy of the tree elsewhere renders the same bytes (no paths, no times)
    other = build_tree(tmp_path / "elsewhere")
    assert render_tree_site(other.layout, other.lock) == first

    config = parse_config({"registry": {"root": "public", "hosts": []}}, tmp_path / "r.toml")
    console = Console(verbosity=-1)
    page = tree.layout.path(BROWSE_REL)
    data = {rel: tree.layout.path(rel) for rel in first.data}
    written = write_host_configs(config, tree.layout, tree.lock, console)
    assert {page, *data.values()} <= set(written)
    assert page.read_bytes() == first.page
    assert all(path.read_bytes() == first.data[rel] for rel, path in data.items())

    def stamps() -> dict[Path, tuple[int, int]]:
        paths = [page, *tree.layout.path(BROWSE_DATA_DIR).iterdir()]
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}

    before = stamps()
    assert not {page, *data.values()} & set(
        write_host_configs(config, tree.layout, tree.lock, console)
    )
    assert stamps() == before
    # a changed lock rewrites the page, writes nothing else, and removes the data file of
    # the dropped repository; the others keep their inodes
    smaller = make_lock(tree.lock.config_hash, [t for t in tree.lock.tags if t.name != "multi"])
    assert write_site(tree.layout, render_tree_site(tree.layout, smaller)) == [page]
    after = stamps()
    (dropped,) = set(before) - set(after)
    assert json.loads(dropped.name and first.data[f"browse/{dropped.name}"])["name"] == "multi"
    assert {p: s for p, s in after.items() if p != page} == {
        p: s for p, s in before.items() if p not in (page, dropped)
    }
    assert b'data-name="multi"' not in page.read_bytes()
    # one tag moved: only that repository's data file is new
    moved = [
        t if (t.name, t.tag) != ("app-oci", "v1") else dataclasses.replace(t, total_size=1)
        for t in smaller.tags
    ]
    written = write_site(tree.layout, render_tree_site(tree.layout, make_lock("x", moved)))
    assert len(written) == 2 and written[-1] == page
    assert json.loads(written[0].read_bytes())["name"] == "app-oci"
    assert len(list(tree.layout.path(BROWSE_DATA_DIR).iterdir())) == 4


def test_hostile_strings_are_escaped_in_the_page_and_intact_in_the_data() -> None:
    tags, manifests, configs = hostile_lock_and_bytes()
    site = render_site(model_from(make_lock("h", tags), manifests, configs))
    page = site.page
    doc = parse(page)
    assert len(doc.scripts) == 1 and "pwned" not in doc.scripts[0]
    assert not doc.all("img")
    assert b"<img" not in page and b"</script><script>" not in page
    for tag, attrs in doc.elements:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    assert "script/alert" in "".join(doc.text)
    # the hostile strings reach the data files intact (the script sets them as text)
    rows = tags_of(site)
    evil = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    assert rows["onerror"][0][6][0][0] == "linux/" + evil
    assert rows["script/alert"][0][6][0][0] == f"linux/{evil}/'\"&<>"  # from the config
    assert rows["a__b--c/x.y"][0][5] == "application/x&amp+script"


def test_unknown_facts_when_the_tree_lacks_manifests() -> None:
    tags, _, _ = hostile_lock_and_bytes()
    site = render_site(model_from(make_lock("h", tags), {}, {}))
    rows = tags_of(site)
    assert rows["onerror"][0][6][0][2:] == [None, None]  # size and layers unknown
    assert rows["script/alert"][0][6] == []
    # damaged bytes (not hashing to the digest) are not trusted
    bad = {t.digest: b'{"schemaVersion":2}' for t in tags}
    assert render_site(model_from(make_lock("h", tags), bad, {})) == site


def test_empty_tree_page() -> None:
    site = render_site(BrowseModel())
    assert b"serves no images yet" in site.page
    assert b"0 repositories" in site.page
    assert site.data == {}


def test_page_size_does_not_grow_with_tags_per_repository(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """100 repositories × 1,000 tags (issue 13's 100,000): the page stays small and the
    same size as with 10 tags each; each data file holds one repository's tags."""

    def site_of(per_repo: int) -> tuple[BrowseSite, float]:
        digest = "sha256:" + "ab" * 32
        tags = [
            LockedTag(f"huge/r{n:03d}", f"1.{j // 100}.{j % 100}", f"oci:layouts/r{n:03d}",
                      digest, mediatypes.OCI_MANIFEST, 700, 1500)
            for n in range(100)
            for j in range(per_repo)
        ]  # fmt: skip
        start = time.perf_counter()
        site = render_site(model_from(make_lock("big", tags), {}, {}))
        return site, time.perf_counter() - start

    small, _ = site_of(10)
    big, seconds = site_of(1000)
    assert len(big.page) < 100_000 < 1_000_000  # issue 13: first load ≤ 1 MB
    assert abs(len(big.page) - len(small.page)) <= 100 * 12  # only the counts' digits differ
    assert OPEN_ALL_TAGS < 100_000 and b"<details open" not in big.page
    assert b"<details open" in small.page  # 1,000 tags: everything opens at load
    sizes = sorted(len(d) for d in big.data.values())
    assert len(sizes) == 100 and sizes[-1] < 200_000
    first = tags_of(big)["huge/r000"]
    assert [r[0] for r in first[:3]] == ["1.9.99", "1.9.98", "1.9.97"]  # newest first
    with capsys.disabled():
        print(
            f"\n[browse] 100,000 tags in 100 repositories: page {len(big.page):,} bytes, "
            f"data files {sizes[0]:,}–{sizes[-1]:,} bytes, rendered in {seconds:.2f} s"
        )


def test_route_table_and_serve_answer_the_page_and_data(tree: BuiltTree) -> None:
    assert classify("/") == Target(Kind.BROWSE)
    assert classify("/index.html") == Target(Kind.BROWSE)
    assert Target(Kind.BROWSE).rel == BROWSE_REL
    hexdigest = "0123456789abcdef" * 4
    assert classify(f"/browse/{hexdigest}.json") == Target(Kind.BROWSE_DATA, ref=hexdigest)
    for bad in (f"/browse/{hexdigest}.json\n", f"/browse/{hexdigest.upper()}.json", "/browse/"):
        assert not isinstance(classify(bad), Target), bad
    resolver = TreeResolver(tree.layout)
    assert resolver.answer("GET", "/", {}).status == 404
    site = render_tree_site(tree.layout, tree.lock)
    write_site(tree.layout, site)

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        answer = resolver.answer("GET", path, {})
        body = answer.file.read_bytes() if answer.file is not None else answer.body
        return answer.status, {k.lower(): v for k, v in answer.headers}, body

    assert_site_served(get, site)
    assert get("/?q=x")[0] == 200
    assert resolver.answer("GET", "/index.htm", {}).status == 404


def test_gc_keeps_the_page_and_its_data(tree: BuiltTree) -> None:
    site = render_tree_site(tree.layout, tree.lock)
    write_site(tree.layout, site)
    smaller = make_lock(tree.lock.config_hash, [t for t in tree.lock.tags if t.name != "multi"])
    plan = collect_garbage(lock=smaller, layout=tree.layout, console=Console(), dry_run=False)
    assert plan.sweeps, "gc removed the dropped repository"
    assert all(s.rel.startswith(("v2/", "<store>/")) for s in plan.sweeps)
    assert tree.layout.path(BROWSE_REL).is_file()
    assert all(tree.layout.path(rel).is_file() for rel in site.data)


def test_module_placeholder_is_what_the_script_uses() -> None:
    from registrish_lock.serving import browse_assets, browse_page

    assert f'host = "{browse_page.HOST_PLACEHOLDER}"' in browse_assets.SCRIPT
    page = render_page(BrowseModel())
    assert f"<code>{browse_page.HOST_PLACEHOLDER}</code>".encode() in page


def test_a_scoped_render_reads_only_the_changed_repositories(tree: BuiltTree) -> None:
    """`changed=`: the other repositories keep the data files the page on disk names (no
    tree read), and the bytes equal a full render's."""
    write_site(tree.layout, render_tree_site(tree.layout, tree.lock))
    assert current_data_files(tree.layout).keys() == set(tree.lock.names())
    moved = make_lock(
        "x",
        [
            dataclasses.replace(t, total_size=1) if (t.name, t.tag) == ("app-oci", "v1") else t
            for t in tree.lock.tags
        ],
    )
    full = render_tree_site(tree.layout, moved)
    # the unchanged repositories' manifests are gone: a scoped render must not read them
    for name in ("multi", "app-docker"):
        for path in (tree.layout.v2 / name / "manifests").iterdir():
            path.unlink()
    scoped = render_tree_site(tree.layout, moved, changed=frozenset({"app-oci"}))
    assert scoped.page == full.page
    assert list(scoped.data) == [r for r, d in full.data.items() if b'"name":"app-oci"' in d]
    assert write_site(tree.layout, scoped)[-1] == tree.layout.path(BROWSE_REL)
    assert current_data_files(tree.layout) == {
        json.loads(d)["name"]: r for r, d in full.data.items()
    }
    # a data file missing from disk is rendered again, from the tree
    (rel,) = [r for r, d in full.data.items() if b'"name":"team/tools/app"' in d]
    tree.layout.path(rel).unlink()
    again = render_tree_site(tree.layout, moved, changed=frozenset())
    assert again.page == full.page and list(again.data) == [rel]
