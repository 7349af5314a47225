"""The browse page: `<root>/index.html` plus one static data file per repository.

The page is a small shell whatever the tree's size: one collapsible section per repository
(name, sources, tag count), a filter box and an inline script. Each repository's tags live
in `browse/<sha256>.json`, fetched when the section is opened (issue 13: the one flat page
was 57 MB at 100,000 tags). Data files are named by the sha256 of their bytes: one that
exists is current, so an unchanged repository's file is never rewritten, a host may cache
it forever, and the page never names a file of another sync. Files no page names any
more are removed after the page is written.

Design choices (measured in headless Chromium, tests/test_browse_chromium.py, BENCHMARKS.md):
- Up to `OPEN_ALL_TAGS` tags in all, every section starts open (every data file is
  fetched at load) and the filter searches every tag, as a flat page did. Above that,
  sections start closed; the filter matches repository names and the tags of opened
  repositories, and a button fetches the rest on request.
- The script builds rows with DOM calls (`textContent`, never markup from data), at most
  `ROWS_STEP` per repository at a time, newest version first (`selectors.newest_first`,
  applied when the data file is written), with a "show more" button.
- Data never goes inside the script or the markup's code: the only escaping context of the
  page is HTML text and double-quoted attributes (`html.escape`).
- A Content-Security-Policy with the hashes of the inline style and script; `connect-src
  'self'` lets the script fetch the data files and nothing else.
- Deterministic bytes (sorted, no timestamps): an unchanged tree rewrites nothing.
- Without JavaScript the page lists the repositories, each with a link to its data file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_write_bytes
from ..lock.lockfile import Lock
from ..tree.layout import Layout
from .browse import BrowseModel, TagFacts, read_model
from .browse_assets import SCRIPT, STYLE
from .routes import BROWSE_DATA_DIR, BROWSE_REL, browse_data_rel

TITLE = "Container images"
#: Placeholder for the registry host where JavaScript cannot fill it in.
HOST_PLACEHOLDER = "HOST"
#: Up to this many tags in all, every repository starts open (see the module docstring).
OPEN_ALL_TAGS = 2000
#: Format of the data files (the first key of each, for readers other than the page).
DATA_FORMAT = 1
_DATA_NAME = re.compile(r"^[a-f0-9]{64}\.json$")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    "default-src 'none'; "
    f"style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; connect-src 'self'; "
    "img-src 'none'; form-action 'none'; base-uri 'none'"
)


def _e(text: str) -> str:
    """Escape for HTML text and double-quoted attribute values."""
    return html.escape(text, quote=True)


def repository_data(name: str, tags: tuple[TagFacts, ...]) -> bytes:
    """One repository's data file: compact JSON, tags in the page's order. Each tag is
    `[tag, digest, media type, is index, total size, artifact type or "", platforms]`,
    each platform `[platform or "", digest, size or null, layers or null]`."""
    rows = [
        [
            t.tag,
            t.digest,
            t.media_type,
            t.is_index,
            t.total_size,
            t.artifact_type or "",
            [[p.platform, p.digest, p.size, p.layers] for p in t.platforms],
        ]
        for t in tags
    ]
    doc = {
        "format": DATA_FORMAT,
        "name": name,
        "sources": sorted({t.source for t in tags}),
        "tags": rows,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class BrowseSite:
    """The page and its data files (tree-relative path → bytes). A scoped render
    (`render_tree_site(changed=…)`) holds only the changed repositories' data files."""

    page: bytes
    data: dict[str, bytes]


@dataclass(frozen=True)
class _Section:
    """What the page says about one repository: all from the lock, plus its data file."""

    name: str
    sources: str
    count: int
    rel: str


def render_site(model: BrowseModel, *, title: str = TITLE) -> BrowseSite:
    """The page and every repository's data file. Pure and deterministic."""
    data: dict[str, bytes] = {}
    sections = _render_repositories(model, data)
    return BrowseSite(_page(sections, title), data)


def _render_repositories(model: BrowseModel, data: dict[str, bytes]) -> list[_Section]:
    """The model's sections; their data files go into `data`."""
    sections = []
    for name, repo_tags in model.repositories:
        body = repository_data(name, repo_tags)
        rel = browse_data_rel(hashlib.sha256(body).hexdigest())
        data[rel] = body
        sources = ", ".join(sorted({t.source for t in repo_tags}))
        sections.append(_Section(name, sources, len(repo_tags), rel))
    return sections


def _page(sections: list[_Section], title: str) -> bytes:
    names = len(sections)
    tags = sum(s.count for s in sections)
    open_attr = " open" if tags <= OPEN_ALL_TAGS else ""
    out = [
        "<!doctype html>\n",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<meta name="generator" content="registrish">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="summary">{names:,} repositor{"y" if names == 1 else "ies"} · '
        f"{tags:,} tag{'' if tags == 1 else 's'} · served by a static registry "
        "made with registrish</p>",
        '<div class="search" role="search"><label for="q">Filter</label>'
        '<input id="q" type="search" disabled autocomplete="off" spellcheck="false" '
        'placeholder="name, tag, platform or digest" aria-describedby="status">'
        '<button id="all" type="button" hidden>Search every repository\'s tags</button>'
        '<p id="status" role="status" aria-live="polite"></p></div>',
        "<noscript><p>Without JavaScript, each repository links to its tags as JSON. Pull "
        f"with <code>docker pull {HOST_PLACEHOLDER}/NAME:TAG</code>, where "
        f"<code>{HOST_PLACEHOLDER}</code> is this server's host name (and port).</p>"
        "</noscript></header>\n<main>",
        '<p id="none" class="none" hidden>Nothing matches the filter.</p>\n',
    ]
    if not sections:
        out.append('<p class="none">This registry serves no images yet.</p>\n')
    for index, s in enumerate(sections):
        plural = "" if s.count == 1 else "s"
        out.append(
            f'<section class="repo" data-name="{_e(s.name)}" data-src="{s.rel}" '
            f'data-tags="{s.count}" aria-labelledby="r{index}"><details{open_attr}>'
            f'<summary><h2 id="r{index}">{_e(s.name)} <span class="src">from {_e(s.sources)}'
            f'</span> <span class="count">{s.count:,} tag{plural}</span>'
            f'</h2></summary><div class="body"><noscript><a href="{s.rel}">tags of '
            f"{_e(s.name)} (JSON)</a></noscript></div></details></section>\n"
        )
    out.append(f"</main>\n<script>{SCRIPT}</script>\n</body></html>\n")
    return "".join(out).encode("utf-8")


def render_page(model: BrowseModel, *, title: str = TITLE) -> bytes:
    """`index.html` alone (UTF-8). Pure and deterministic."""
    return render_site(model, title=title).page


def render_tree_site(
    layout: Layout, lock: Lock, *, changed: frozenset[str] | None = None
) -> BrowseSite:
    """`render_site(read_model(layout, lock))`: what sync writes. With `changed` (the
    repositories whose lock entries differ from the tree's last complete sync), only those
    are read from the tree; every other one keeps the data file the page on disk names
    (read again when that file is missing). Same bytes as a full render when the tree
    is as that sync left it."""
    kept: dict[str, str] = {}
    if changed is not None:
        kept = {n: rel for n, rel in current_data_files(layout).items() if n not in changed}
    # One repository's manifests and model at a time (the tree's were 100,000 tags' worth).
    sections: list[_Section] = []
    data: dict[str, bytes] = {}
    for name, part in lock.by_repository():
        if name in kept:
            sources = ", ".join(sorted({t.source for t in part.tags}))
            sections.append(_Section(name, sources, len(part.tags), kept[name]))
        else:
            sections += _render_repositories(read_model(layout, part), data)
    return BrowseSite(_page(sections, TITLE), data)


_SECTION_RE = re.compile(
    r'<section class="repo" data-name="([^"]*)" data-src="(browse/[a-f0-9]{64}\.json)" '
    r'data-tags="(\d+)"[^>]*><details[^>]*><summary><h2 [^>]*>[^<]* <span class="src">from '
    r"([^<]*)</span>"
)


def _sections_of(page: bytes) -> list[_Section]:
    """The sections a rendered page lists (it is ours: escaped, one per line)."""
    return [
        _Section(html.unescape(m[1]), html.unescape(m[4]), int(m[3]), m[2])
        for m in _SECTION_RE.finditer(page.decode("utf-8"))
    ]


def named_data_files(page: bytes) -> dict[str, str]:
    """Repository → data file, as a rendered page names them (`check` reads them)."""
    return {s.name: s.rel for s in _sections_of(page)}


def current_data_files(layout: Layout) -> dict[str, str]:
    """Repository → data file, as the page on disk names them (files that exist only)."""
    try:
        page = layout.path(BROWSE_REL).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {s.name: s.rel for s in _sections_of(page) if layout.path(s.rel).is_file()}


def write_site(layout: Layout, site: BrowseSite) -> list[Path]:
    """Write the data files that do not exist yet, then the page if it changed, then remove
    the data files the page no longer names. Returns the files written.

    In this order a host never serves a page naming a missing file, and an interrupted
    sync leaves at worst unnamed files that the next write removes."""
    written: list[Path] = []
    tmp_dir = layout.tmp if layout.tmp.is_dir() else None
    for rel, body in sorted(site.data.items()):
        path = layout.path(rel)
        if not path.is_file():  # content-addressed: an existing file holds these bytes
            atomic_write_bytes(path, body, tmp_dir=tmp_dir)
            written.append(path)
    page = layout.path(BROWSE_REL)
    try:
        unchanged = page.read_bytes() == site.page
    except (FileNotFoundError, NotADirectoryError):
        unchanged = False
    if not unchanged:
        atomic_write_bytes(page, site.page, tmp_dir=tmp_dir)
        written.append(page)
    directory = layout.path(BROWSE_DATA_DIR)
    named = {layout.path(s.rel).name for s in _sections_of(site.page)}
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in directory.iterdir():
            if _DATA_NAME.match(entry.name) and entry.name not in named:
                entry.unlink(missing_ok=True)
    return written
