"""The browse page: content, escaping, determinism, size with 1,000+ tags, and how it is
wired in (written by the host-config step, served at `/` by `serve`, kept by gc)."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import json
import re
import time
from pathlib import Path

import pytest
from support.locks import big_lock, hostile_lock_and_bytes
from support.trees import BuiltTree, build_tree

from registrish_lock.console import Console
from registrish_lock.lock.config import parse_config
from registrish_lock.lock.lockfile import make_lock
from registrish_lock.serving import browse
from registrish_lock.serving.browse import (
    BrowseModel,
    model_from,
    read_model,
    render_page,
    render_tree_page,
)
from registrish_lock.serving.hosts import write_host_configs
from registrish_lock.serving.routes import BROWSE_REL, HTML, Kind, Target, classify
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


def test_page_lists_repositories_tags_platforms_sizes_and_pull_commands(tree: BuiltTree) -> None:
    page = render_tree_page(tree.layout, tree.lock)
    doc = parse(page)
    text = "".join(doc.text)
    h2 = [t for t, _ in doc.elements if t == "h2"]
    assert len(h2) == len(tree.lock.names()) == 5
    for name in tree.lock.names():
        assert f"{name} from 127.0.0.1:5000/{name}" in text
    assert len(doc.all("tr")) == len(tree.lock.tags) + len(h2)  # + one header row each
    assert [a["data-name"] for a in doc.all("section")] == tree.lock.names()
    for tag in tree.lock.tags:
        assert f"docker pull HOST/{tag.name}:{tag.tag}" in text
        assert tag.digest in text
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
        assert f"{p.platform} · " in text
    # a single-manifest tag gets its platform from the image config in the tree
    assert [p.platform for p in facts["app-docker:v1"].platforms] == ["linux/amd64"]
    # copy buttons only work with JavaScript, so the script adds them (tested in Chromium)
    assert not doc.all("button")
    # the search box has a label
    (label,) = doc.all("label")
    assert label["for"] == "q" and any(a.get("id") == "q" for a in doc.all("input"))


def test_no_external_assets_and_csp_hashes_match_the_inline_code(tree: BuiltTree) -> None:
    page = render_tree_page(tree.layout, tree.lock)
    doc = parse(page)
    assert not re.search(rb"(src|href)\s*=", page), "no external asset may be referenced"
    assert not re.search(rb"https?://", page)
    (script,) = doc.scripts
    (style,) = doc.styles
    (csp,) = [a["content"] for a in doc.all("meta") if a.get("http-equiv")]

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert f"script-src {digest(script)};" in csp
    assert f"style-src {digest(style)};" in csp
    assert "default-src 'none'" in csp


def test_deterministic_and_not_rewritten_when_unchanged(tmp_path: Path, tree: BuiltTree) -> None:
    first = render_tree_page(tree.layout, tree.lock)
    assert first == render_tree_page(tree.layout, tree.lock)
    # a copy of the tree elsewhere renders the same bytes (no paths, no times)
    other = build_tree(tmp_path / "elsewhere")
    assert render_tree_page(other.layout, other.lock) == first

    config = parse_config({"registry": {"root": "public", "hosts": []}}, tmp_path / "r.toml")
    console = Console(verbosity=-1)
    page = tree.layout.path(BROWSE_REL)
    assert page in write_host_configs(config, tree.layout, tree.lock, console)
    assert page.read_bytes() == first
    stat = page.stat()
    assert page not in write_host_configs(config, tree.layout, tree.lock, console)
    assert (page.stat().st_ino, page.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    # a changed lock changes the page (and only then is it written again)
    smaller = make_lock(tree.lock.config_hash, [t for t in tree.lock.tags if t.name != "multi"])
    assert page in write_host_configs(config, tree.layout, smaller, console)
    assert b"multi-docker" in page.read_bytes()
    assert b">multi <" not in page.read_bytes()


def test_hostile_strings_are_escaped_in_text_and_attributes() -> None:
    tags, manifests, configs = hostile_lock_and_bytes()
    page = render_page(model_from(make_lock("h", tags), manifests, configs))
    doc = parse(page)
    assert len(doc.scripts) == 1 and "pwned" not in doc.scripts[0]
    assert not doc.all("img")
    assert b"<img" not in page and b"</script><script>" not in page
    for tag, attrs in doc.elements:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    text = "".join(doc.text)
    # the hostile strings are shown as text, intact
    assert '<img src=x onerror="window.pwned=2">' in text
    assert "application/x&amp+script" in text
    assert "oras pull HOST/a__b--c/x.y:Z_9.-" in text
    assert "linux/" + "</script><script>window.pwned=1</script>" in text
    assert "'\"&<>" in text  # the variant from the config


def test_unknown_facts_when_the_tree_lacks_manifests() -> None:
    tags, _, _ = hostile_lock_and_bytes()
    model = model_from(make_lock("h", tags), {}, {})
    page = render_page(model)
    assert page.count(b'class="none">unknown</span>') >= 2
    # damaged bytes (not hashing to the digest) are not trusted
    bad = {t.digest: b'{"schemaVersion":2}' for t in tags}
    assert render_page(model_from(make_lock("h", tags), bad, {})) == page


def test_empty_tree_page() -> None:
    page = render_page(BrowseModel())
    assert b"serves no images yet" in page
    assert b"0 repositories" in page


def test_one_thousand_tags_size_and_render_time_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tags, manifests = big_lock(names=50, tags_per_name=24)  # 1,200 tags, 2,400 platforms
    lock = make_lock("big", tags)
    start = time.perf_counter()
    model = model_from(lock, manifests, {})
    page = render_page(model)
    seconds = time.perf_counter() - start
    doc = parse(page)
    assert len(doc.all("tr")) == 1200 + 50
    assert model.tag_count == 1200
    import gzip

    with capsys.disabled():
        print(
            f"\n[browse] 1,200 tags / 2,400 platforms: {len(page):,} bytes "
            f"({len(gzip.compress(page)):,} gzipped), rendered in {seconds * 1000:.0f} ms"
        )


def test_route_table_and_serve_answer_the_page(tree: BuiltTree) -> None:
    assert classify("/") == Target(Kind.BROWSE)
    assert classify("/index.html") == Target(Kind.BROWSE)
    assert Target(Kind.BROWSE).rel == BROWSE_REL
    resolver = TreeResolver(tree.layout)
    missing = resolver.answer("GET", "/", {})
    assert missing.status == 404
    page = render_tree_page(tree.layout, tree.lock)
    tree.layout.path(BROWSE_REL).write_bytes(page)
    for path in ("/", "/index.html", "/?q=x"):
        answer = resolver.answer("GET", path, {})
        assert answer.status == 200
        assert dict(answer.headers)["Content-Type"] == HTML
        assert answer.file is not None and answer.file.read_bytes() == page
    assert resolver.answer("GET", "/index.htm", {}).status == 404


def test_gc_keeps_the_page(tree: BuiltTree) -> None:
    page = tree.layout.path(BROWSE_REL)
    page.write_bytes(render_tree_page(tree.layout, tree.lock))
    smaller = make_lock(tree.lock.config_hash, [t for t in tree.lock.tags if t.name != "multi"])
    plan = collect_garbage(lock=smaller, layout=tree.layout, console=Console(), dry_run=False)
    assert plan.sweeps, "gc removed the dropped repository"
    assert all(not s.rel.endswith(BROWSE_REL) or s.rel.startswith("v2/") for s in plan.sweeps)
    assert page.is_file()


def test_module_placeholder_is_what_the_script_replaces() -> None:
    # the script fills `.h` spans; the no-JS text names the placeholder
    assert 'querySelectorAll(".h")' in browse._SCRIPT
    page = render_page(BrowseModel())
    assert f"Replace <code>{browse.HOST_PLACEHOLDER}</code>".encode() in page
