"""The browse page: one self-contained `<root>/index.html` listing what the tree serves.

Repositories, tags, platforms, sizes, digests and a pull command to copy, with a filter
box. `model_from` (lock + manifest/config bytes → `BrowseModel`) and `render_page`
(model → bytes) are pure; `read_model` is the only I/O (it reads locked manifests and
single-image configs from the tree, so an unsynced object simply shows fewer facts).

Design choices (measured in headless Chromium with 1,200 tags, tests/test_browse_chromium.py):
- Rows are rendered on the server, so the page is complete without JavaScript (the
  pull command then says `HOST`). The script fills in `location.host`, derives each
  row's search key and copy buttons from its cells, filters by toggling `hidden`, and
  copies. `content-visibility: auto` per repository keeps layout of off-screen rows
  lazy (it roughly halved the load time). No data is ever placed inside the script, so
  the only escaping context is HTML (text and double-quoted attributes): `html.escape`.
- A Content-Security-Policy with the hashes of the inline style and script: nothing
  else can run or load, even if a hostile string slipped through.
- Deterministic bytes (sorted, no timestamps): an unchanged tree never rewrites it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..console import human_bytes
from ..errors import IntegrityError
from ..lock.lockfile import Lock, LockedTag
from ..lock.selectors import newest_first
from ..oci import mediatypes
from ..oci.manifest import Manifest, parse_manifest, sha256_digest
from ..tree.layout import Layout

#: Placeholder for the registry host in the no-JavaScript rendering.
HOST_PLACEHOLDER = "HOST"
#: Image configs larger than this are not read for their platform (they never are).
MAX_CONFIG_BYTES = 1 << 20
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


@dataclass(frozen=True, order=True)
class PlatformFacts:
    """One runnable image of a tag: its platform and what pulling it downloads."""

    platform: str  # "linux/amd64", or "" when unknown
    digest: str
    #: Manifest + config + layers in bytes; None when the manifest is not in the tree.
    size: int | None = None
    layers: int | None = None


@dataclass(frozen=True)
class TagFacts:
    name: str
    tag: str
    source: str
    digest: str
    media_type: str
    total_size: int
    platforms: tuple[PlatformFacts, ...] = ()
    #: Set for OCI artifacts that are not images (Helm charts, signatures …).
    artifact_type: str | None = None

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)


@dataclass(frozen=True)
class BrowseModel:
    """Tags grouped by repository: repositories by name, tags newest version first."""

    repositories: tuple[tuple[str, tuple[TagFacts, ...]], ...] = ()

    @property
    def tag_count(self) -> int:
        return sum(len(tags) for _, tags in self.repositories)


# --- facts (pure) --------------------------------------------------------------------------


def _parse(data: bytes | None, digest: str) -> Manifest | None:
    if data is None:
        return None
    try:
        return parse_manifest(data, expected_digest=digest)
    except IntegrityError:  # a damaged file: the page shows less, `sync --verify` repairs
        return None


def _platform_of_config(data: bytes | None) -> str:
    """`os/arch[/variant]` from an image config; "" when absent or malformed."""
    if data is None:
        return ""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    os_, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
        return ""
    return f"{os_}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_}/{arch}"


def _image_size(manifest: Manifest) -> int:
    return manifest.size + sum(d.size for d in manifest.blobs)


def _artifact_type(manifest: Manifest) -> str | None:
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.config is not None and manifest.config.media_type not in IMAGE_CONFIG_TYPES:
        return manifest.config.media_type
    return None


def tag_facts(
    tag: LockedTag, manifests: Mapping[str, bytes], configs: Mapping[str, bytes]
) -> TagFacts:
    """What the page says about one locked tag. `manifests` maps digests to manifest
    bytes (verified against the digest here), `configs` config digests to config bytes;
    anything missing is shown as unknown."""
    platforms: list[PlatformFacts] = []
    artifact_type = None
    if tag.platforms:
        for p in tag.platforms:
            child = _parse(manifests.get(p.digest), p.digest)
            platforms.append(
                PlatformFacts(
                    platform=p.platform,
                    digest=p.digest,
                    size=_image_size(child) if child else None,
                    layers=len(child.layers) if child else None,
                )
            )
    elif not mediatypes.is_index(tag.media_type):
        image = _parse(manifests.get(tag.digest), tag.digest)
        if image is not None:
            artifact_type = _artifact_type(image)
            platform = ""
            if artifact_type is None and image.config is not None:
                platform = _platform_of_config(configs.get(image.config.digest))
            platforms.append(
                PlatformFacts(platform, tag.digest, _image_size(image), len(image.layers))
            )
    return TagFacts(
        name=tag.name,
        tag=tag.tag,
        source=tag.source,
        digest=tag.digest,
        media_type=tag.media_type,
        total_size=tag.total_size,
        platforms=tuple(sorted(platforms)),
        artifact_type=artifact_type,
    )


def model_from(
    lock: Lock, manifests: Mapping[str, bytes], configs: Mapping[str, bytes]
) -> BrowseModel:
    """The page's content from the lock plus tree bytes (see `tag_facts`). Pure.
    Repositories by name; tags newest version first (`selectors.newest_first`)."""
    by_name: dict[str, list[TagFacts]] = {}
    for tag in lock.tags:
        by_name.setdefault(tag.name, []).append(tag_facts(tag, manifests, configs))
    return BrowseModel(
        tuple(
            (name, tuple(newest_first(tags, lambda t: t.tag)))
            for name, tags in sorted(by_name.items())
        )
    )


# --- reading the tree (I/O) ----------------------------------------------------------------


def _read(layout: Layout, rel: str, limit: int) -> bytes | None:
    path = layout.path(rel)
    try:
        if path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_model(layout: Layout, lock: Lock) -> BrowseModel:
    """`model_from` with the locked image manifests (and the configs of single-image
    tags, for their platform) read from the tree. Missing files mean unknown facts."""
    manifests: dict[str, bytes] = {}
    configs: dict[str, bytes] = {}
    for tag in lock.tags:
        wanted = [p.digest for p in tag.platforms]
        if not mediatypes.is_index(tag.media_type):
            wanted.append(tag.digest)
        for digest in wanted:
            if digest in manifests:
                continue
            data = _read(layout, Layout.rel_manifest(tag.name, digest), 4 << 20)
            if data is None:
                continue
            manifests[digest] = data
            if digest == tag.digest:
                image = _parse(data, digest)
                if image is not None and image.config is not None:
                    config = image.config
                    if config.media_type in IMAGE_CONFIG_TYPES and config.digest not in configs:
                        blob = _read(
                            layout, Layout.rel_blob(tag.name, config.digest), MAX_CONFIG_BYTES
                        )
                        # only bytes that hash to the digest are trusted
                        if blob is not None and sha256_digest(blob) == config.digest:
                            configs[config.digest] = blob
    return model_from(lock, manifests, configs)


# --- the page (pure) -----------------------------------------------------------------------

_STYLE = """\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#57606a;--bg:#fff;--line:#d0d7de;\
--accent:#0969da;--chip:#eaeef2}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9da7b3;--bg:#0d1117;\
--line:#30363d;--accent:#4493f8;--chip:#21262d}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);\
background:var(--bg)}
header{position:sticky;top:0;z-index:1;background:var(--bg);border-bottom:1px solid var(--line);\
padding:.8rem 1.5rem}
header h1{margin:0 0 .3rem;font-size:1.3rem}
.summary,.src,.none{color:var(--muted)}
.summary{margin:0 0 .5rem}
.search{display:flex;gap:.6rem;align-items:center;flex-wrap:wrap}
.search input{flex:1;min-width:14rem;max-width:40rem;padding:.45rem .6rem;font:inherit;\
color:inherit;background:var(--bg);border:1px solid var(--line);border-radius:6px}
.search input:focus{outline:2px solid var(--accent);outline-offset:1px}
#status{margin:0;color:var(--muted);min-height:1.2em}
main{padding:0 1.5rem 2rem}
section{margin-top:1.4rem;content-visibility:auto;contain-intrinsic-size:auto 40rem}
h2{font-size:1.1rem;margin:0 0 .4rem;word-break:break-all}
h2 .src{font-weight:normal;font-size:.85rem}
table{border-collapse:collapse;width:100%;table-layout:fixed}
.c-tag{width:13%}.c-plat{width:19%}.c-size{width:6.5rem}.c-digest{width:22%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid var(--line)}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}
td.tag{font-weight:600;overflow-wrap:anywhere}
td.size{white-space:nowrap}
code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.digest code{font-size:12px;word-break:break-all;color:var(--muted)}
ul.plats{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.25rem}
ul.plats li{background:var(--chip);border-radius:4px;padding:0 .4rem;font-size:.85rem;\
white-space:nowrap}
.pull{display:flex;flex-wrap:wrap;gap:.4rem;align-items:flex-start}
.pull code{flex:1 1 16rem;overflow-wrap:anywhere}
.btns{display:flex;gap:.3rem}
button{font:inherit;font-size:.8rem;padding:.15rem .55rem;border:1px solid var(--line);\
border-radius:5px;background:var(--chip);color:inherit;cursor:pointer;white-space:nowrap}
button:hover{border-color:var(--accent)}
button:focus-visible{outline:2px solid var(--accent);outline-offset:1px}
.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
[hidden]{display:none!important}
@media (max-width:800px){td.digest,th.c-digest{display:none}}"""

# No data inside: everything it needs is in the document. Rows carry no copies of their
# facts: the search keys and the copy buttons (useless without JavaScript, so not in the
# static HTML) are built from the cells at load.
_SCRIPT = """\
(function () {
  "use strict";
  var host = location.host;
  if (location.protocol === "file:" || !host) host = "HOST";
  var hs = document.querySelectorAll(".h");
  for (var i = 0; i < hs.length; i++) hs[i].textContent = host;
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.repo"));
  var rows = [], keys = [], owner = [];
  function button(label, aria, text) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.setAttribute("data-label", label);
    b.setAttribute("data-text", text);
    b.setAttribute("aria-label", aria);
    return b;
  }
  sections.forEach(function (section, si) {
    var name = section.getAttribute("data-name");
    var trs = section.querySelectorAll("tbody tr");
    for (var i = 0; i < trs.length; i++) {
      var r = trs[i], c = r.cells, tag = c[0].textContent, digest = c[3].textContent;
      var code = r.querySelector(".pull code"), tool = code.getAttribute("data-tool");
      rows.push(r);
      owner.push(si);
      keys.push((name + ":" + tag + " " + c[1].textContent + " " + digest).toLowerCase());
      var ref = name + ":" + tag;
      var group = document.createElement("span");
      group.className = "btns";
      group.appendChild(button("Copy", "Copy pull command for " + ref, code.textContent));
      group.appendChild(button("Copy @digest",
        "Copy pull command for " + ref + " pinned by digest",
        tool + " " + host + "/" + name + "@" + digest));
      code.parentNode.appendChild(group);
    }
  });
  var input = document.getElementById("q");
  var status = document.getElementById("status");
  var none = document.getElementById("none");
  function filter() {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0, visible = sections.map(function () { return 0; });
    for (var i = 0; i < rows.length; i++) {
      var ok = true;
      for (var j = 0; j < terms.length && ok; j++) ok = keys[i].indexOf(terms[j]) >= 0;
      if (rows[i].hidden === ok) rows[i].hidden = !ok;
      if (ok) { shown++; visible[owner[i]]++; }
    }
    for (var k = 0; k < sections.length; k++) sections[k].hidden = visible[k] === 0;
    none.hidden = shown > 0;
    status.textContent = terms.length ? shown + " of " + rows.length + " tags match" : "";
    try {  // keep the filter in the URL so it can be shared
      history.replaceState(null, "", terms.length ? "#q=" + encodeURIComponent(input.value)
        : location.pathname + location.search);
    } catch (e) { /* some file:// contexts refuse it */ }
  }
  input.disabled = false;
  input.addEventListener("input", filter);
  if (location.hash.indexOf("#q=") === 0) {
    input.value = decodeURIComponent(location.hash.slice(3));
    filter();
  }
  function done(button, text, ok) {
    document.documentElement.setAttribute("data-copied", ok ? text : "");
    button.textContent = ok ? "Copied" : "Select and copy";
    status.textContent = ok ? "Copied: " + text : "Copy failed; select the command and copy it";
    setTimeout(function () { button.textContent = button.getAttribute("data-label"); }, 1500);
  }
  function fallback(button, text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    done(button, text, ok);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-text]") : null;
    if (!button) return;
    var text = button.getAttribute("data-text");
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { done(button, text, true); },
        function () { fallback(button, text); });
    } else {
      fallback(button, text);
    }
  });
})();"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    "default-src 'none'; "
    f"style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
    "img-src 'none'; form-action 'none'; base-uri 'none'"
)


def _e(text: str) -> str:
    """Escape for HTML text and double-quoted attribute values."""
    return html.escape(text, quote=True)


def _size(n: int | None) -> str:
    if n is None:
        return '<span class="none">unknown</span>'
    return f'<span title="{n:,} bytes">{_e(human_bytes(n))}</span>'


def _platform_item(p: PlatformFacts) -> str:
    label = p.platform or "image"
    details = [p.digest]
    if p.layers is not None:
        details.append(f"{p.layers} layer{'s' if p.layers != 1 else ''}")
    if p.size is not None:
        details.append(f"{p.size:,} bytes")
        label = f"{label} · {human_bytes(p.size)}"
    return f'<li title="{_e(", ".join(details))}">{_e(label)}</li>'


def _row(t: TagFacts) -> str:
    tool = "oras pull" if t.artifact_type else "docker pull"
    if t.artifact_type:
        plats = f'<ul class="plats"><li title="artifact type">{_e(t.artifact_type)}</li></ul>'
    elif t.platforms:
        plats = '<ul class="plats">' + "".join(_platform_item(p) for p in t.platforms) + "</ul>"
    else:
        plats = '<span class="none">unknown</span>'
    kind = "index" if t.is_index else "manifest"
    return (
        f'<tr><td class="tag">{_e(t.tag)}</td>'
        f"<td>{plats}</td>"
        f'<td class="size">{_size(t.total_size)}</td>'
        f'<td class="digest"><code title="{kind}: {_e(t.media_type)}">{_e(t.digest)}</code></td>'
        f'<td><div class="pull"><code data-tool="{tool}">{tool} '
        f'<span class="h">{HOST_PLACEHOLDER}</span>/{_e(t.name)}:{_e(t.tag)}</code></div></td>'
        "</tr>"
    )


def render_page(model: BrowseModel, *, title: str = "Container images") -> bytes:
    """The whole `index.html` (UTF-8). Pure and deterministic."""
    names = len(model.repositories)
    tags = model.tag_count
    out = [
        "<!doctype html>\n",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<meta name="generator" content="registrish">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="summary">{names} repositor{"y" if names == 1 else "ies"} · '
        f"{tags} tag{'' if tags == 1 else 's'} · served by a static registry "
        "made with registrish</p>",
        '<div class="search" role="search"><label for="q">Filter</label>'
        '<input id="q" type="search" disabled autocomplete="off" spellcheck="false" '
        'placeholder="name, tag, platform or digest" aria-describedby="status">'
        '<p id="status" role="status" aria-live="polite"></p></div>',
        f"<noscript><p>Replace <code>{HOST_PLACEHOLDER}</code> with this server's "
        "host name (and port).</p></noscript></header>\n<main>",
        '<p id="none" class="none" hidden>No tag matches the filter.</p>\n',
    ]
    if not model.repositories:
        out.append('<p class="none">This registry serves no images yet.</p>\n')
    for index, (name, repo_tags) in enumerate(model.repositories):
        sources = sorted({t.source for t in repo_tags})
        out.append(
            f'<section class="repo" data-name="{_e(name)}" aria-labelledby="r{index}">'
            f'<h2 id="r{index}">{_e(name)} <span class="src">from {_e(", ".join(sources))}'
            "</span></h2>"
            f'<table><caption class="vh">Tags of {_e(name)}</caption><thead><tr>'
            '<th scope="col" class="c-tag">Tag</th><th scope="col" class="c-plat">Platforms</th>'
            '<th scope="col" class="c-size">Size</th><th scope="col" class="c-digest">Digest</th>'
            '<th scope="col">Pull</th>'
            "</tr></thead><tbody>\n"
        )
        out.extend(_row(t) + "\n" for t in repo_tags)
        out.append("</tbody></table></section>\n")
    out.append(f"</main>\n<script>{_SCRIPT}</script>\n</body></html>\n")
    return "".join(out).encode("utf-8")


def render_tree_page(layout: Layout, lock: Lock) -> bytes:
    """`render_page(read_model(layout, lock))`: what sync writes at `routes.BROWSE_REL`
    (`index.html`, served at `/`)."""
    return render_page(read_model(layout, lock))
