"""The browse page's inline style and script (`browse_page`; their hashes go in its CSP)."""

from __future__ import annotations

STYLE = """\
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
section{margin-top:1rem;content-visibility:auto;contain-intrinsic-size:auto 2.5rem}
summary{cursor:pointer}
summary h2{display:inline;font-size:1.1rem;margin:0;word-break:break-all}
h2 .src,h2 .count{font-weight:normal;font-size:.85rem}
.body{margin-top:.4rem}
.more{margin:.5rem 0}
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

# No data inside: the page's markup names each repository's data file, which is fetched
# and turned into rows with DOM calls (text only). See the module docstring of browse_page.
SCRIPT = """\
(function () {
  "use strict";
  var STEP = 200;
  var host = location.host;
  if (location.protocol === "file:" || !host) host = "HOST";
  var input = document.getElementById("q");
  var status = document.getElementById("status");
  var none = document.getElementById("none");
  var all = document.getElementById("all");
  var repos = Array.prototype.map.call(document.querySelectorAll("section.repo"), function (s) {
    return {section: s, details: s.querySelector("details"), body: s.querySelector(".body"),
      count: s.querySelector(".count"), name: s.getAttribute("data-name"),
      src: s.getAttribute("data-src"), size: +s.getAttribute("data-tags"), tags: null,
      keys: null, shown: [], limit: STEP, loading: null, dirty: false};
  });
  function terms() { return input.value.toLowerCase().split(/\\s+/).filter(Boolean); }
  function has(key, ts) {
    for (var j = 0; j < ts.length; j++) if (key.indexOf(ts[j]) < 0) return false;
    return true;
  }
  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    for (var i = 0; ; i++) {
      if (Math.abs(n) < 1024 || i === 4) return i ? n.toFixed(1) + " " + units[i] : n + " B";
      n /= 1024;
    }
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function button(label, aria, text) {
    var b = el("button", "", label);
    b.type = "button";
    b.setAttribute("data-label", label);
    b.setAttribute("data-text", text);
    b.setAttribute("aria-label", aria);
    return b;
  }
  function chip(list, label, title) {
    var li = el("li", "", label);
    li.title = title;
    list.appendChild(li);
  }
  // t: [tag, digest, media type, is index, total size, artifact type, platforms]
  function row(repo, t) {
    var tr = el("tr"), plat = el("td"), list = el("ul", "plats");
    tr.appendChild(el("td", "tag", t[0]));
    if (t[5]) chip(list, t[5], "artifact type");
    t[6].forEach(function (p) {  // [platform, digest, size, layers]
      var label = p[0] || "image", details = [p[1]];
      if (p[3] !== null) details.push(p[3] + " layer" + (p[3] === 1 ? "" : "s"));
      if (p[2] !== null) {
        details.push(p[2].toLocaleString("en") + " bytes");
        label += " \\u00b7 " + human(p[2]);
      }
      if (!t[5]) chip(list, label, details.join(", "));
    });
    plat.appendChild(list.firstChild ? list : el("span", "none", "unknown"));
    tr.appendChild(plat);
    var size = el("td", "size"), total = el("span", "", human(t[4]));
    total.title = t[4].toLocaleString("en") + " bytes";
    size.appendChild(total);
    tr.appendChild(size);
    var digest = el("td", "digest"), code = el("code", "", t[1]);
    code.title = (t[3] ? "index: " : "manifest: ") + t[2];
    digest.appendChild(code);
    tr.appendChild(digest);
    var tool = t[5] ? "oras pull" : "docker pull", ref = repo.name + ":" + t[0];
    var cell = el("td"), pull = el("div", "pull"), group = el("span", "btns");
    var command = el("code", "", tool + " " + host + "/" + ref);
    command.setAttribute("data-tool", tool);
    group.appendChild(button("Copy", "Copy pull command for " + ref, command.textContent));
    group.appendChild(button("Copy @digest", "Copy pull command for " + ref +
      " pinned by digest", tool + " " + host + "/" + repo.name + "@" + t[1]));
    pull.appendChild(command);
    pull.appendChild(group);
    cell.appendChild(pull);
    tr.appendChild(cell);
    return tr;
  }
  function table(repo) {
    var t = el("table"), head = el("tr");
    t.appendChild(el("caption", "vh", "Tags of " + repo.name));
    [["Tag", "c-tag"], ["Platforms", "c-plat"], ["Size", "c-size"], ["Digest", "c-digest"],
     ["Pull", ""]].forEach(function (h) {
      var th = el("th", h[1], h[0]);
      th.scope = "col";
      head.appendChild(th);
    });
    t.appendChild(el("thead")).appendChild(head);
    repo.tbody = t.appendChild(el("tbody"));
    repo.more = el("button", "more");
    repo.more.type = "button";
    repo.more.addEventListener("click", function () { repo.limit += 5 * STEP; draw(repo); });
    repo.body.textContent = "";
    repo.body.appendChild(t);
    repo.body.appendChild(repo.more);
  }
  function draw(repo) {  // the first `limit` matching rows, newest first
    var fresh = el("tbody"), n = Math.min(repo.shown.length, repo.limit);
    for (var i = 0; i < n; i++) fresh.appendChild(row(repo, repo.tags[repo.shown[i]]));
    repo.tbody.parentNode.replaceChild(fresh, repo.tbody);
    repo.tbody = fresh;
    var left = repo.shown.length - n;
    repo.more.hidden = left <= 0;
    repo.more.textContent = "Show " + Math.min(left, 5 * STEP).toLocaleString("en") +
      " more (" + left.toLocaleString("en") + " left)";
    repo.dirty = false;
  }
  function apply(repo, ts) {
    if (!repo.tags) { repo.section.hidden = !has(repo.name.toLowerCase(), ts); return; }
    var shown = [];
    for (var i = 0; i < repo.tags.length; i++) if (has(repo.keys[i], ts)) shown.push(i);
    repo.shown = shown;
    repo.section.hidden = shown.length === 0;
    var n = repo.size.toLocaleString("en") + " tag" + (repo.size === 1 ? "" : "s");
    repo.count.textContent = ts.length ? shown.length.toLocaleString("en") + " of " + n : n;
    if (ts.length && shown.length) repo.details.open = true;
    repo.dirty = true;
    if (repo.details.open) draw(repo);
  }
  function summarize() {
    var ts = terms(), shown = 0, loaded = 0, closed = 0, visible = 0;
    repos.forEach(function (r) {
      if (!r.section.hidden) visible++;
      if (!r.tags) { closed++; return; }
      loaded += r.tags.length;
      if (!r.section.hidden) shown += r.shown.length;
    });
    none.hidden = visible > 0 || !repos.length;
    all.hidden = !(ts.length && closed);
    if (!ts.length) status.textContent = "";
    else if (!closed) {
      status.textContent = shown.toLocaleString("en") + " of " + loaded.toLocaleString("en") +
        " tags match";
    }
    else status.textContent = visible + " of " + repos.length + " repositories match; " +
      closed + " not opened are matched by name only";
  }
  function load(repo) {
    if (repo.loading) return repo.loading;
    repo.body.textContent = "";
    repo.body.appendChild(el("p", "none", "Loading\\u2026"));
    repo.loading = fetch(repo.src).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.json();
    }).then(function (doc) {
      repo.tags = doc.tags;
      repo.keys = doc.tags.map(function (t) {
        return (repo.name + ":" + t[0] + " " + t[5] + " " +
          t[6].map(function (p) { return p[0]; }).join(" ") + " " + t[1]).toLowerCase();
      });
      table(repo);
      repo.section.setAttribute("data-loaded", "");
      apply(repo, terms());
      summarize();
    }, function (err) {
      repo.loading = null;  // opening it again retries
      repo.body.textContent = "";
      repo.body.appendChild(el("p", "none", "Could not load " + repo.src + " (" +
        err.message + "): open this page from the registry's server."));
    });
    return repo.loading;
  }
  function filter() {
    var ts = terms();
    repos.forEach(function (r) { apply(r, ts); });
    summarize();
    try {  // keep the filter in the URL so it can be shared
      history.replaceState(null, "", ts.length ? "#q=" + encodeURIComponent(input.value)
        : location.pathname + location.search);
    } catch (e) { /* some file:// contexts refuse it */ }
  }
  repos.forEach(function (r) {
    r.details.addEventListener("toggle", function () {
      if (!r.details.open) return;
      if (!r.tags) load(r);
      else if (r.dirty) draw(r);
    });
    if (r.details.open) load(r);  // a small registry: every section starts open
  });
  all.addEventListener("click", function () {
    var todo = repos.filter(function (r) { return !r.tags; }), next = 0;
    all.disabled = true;
    status.textContent = "Loading the tags of " + todo.length + " repositories\\u2026";
    function worker() {  // four fetches at a time
      if (next >= todo.length) return Promise.resolve();
      return load(todo[next++]).then(worker);
    }
    Promise.all([worker(), worker(), worker(), worker()]).then(function () {
      all.disabled = false;
      filter();
    });
  });
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
  document.documentElement.setAttribute("data-ready", "");
})();"""
