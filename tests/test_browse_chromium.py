"""The browse page in a real headless Chromium (Debian's `chromium`), driven over the
DevTools protocol (websocket-client: no browser download, no chromedriver).
`registrish lock` + `sync` (registrish_lock.cli.main) mirror the seeded upstream of the
test bed; `registrish serve` serves the tree; Chromium loads `/`, the page fetches each
repository's data file, and the tests type into the filter box and click copy buttons
with real input events, then read the clipboard. At 100,000 tags the page loads alone and
a repository opens on a click. nginx, Caddy and Apache serve the page and its data files
with their generated configs; Chromium opens repositories from nginx.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websocket
from support.hosts import start_host
from support.locks import hostile_lock_and_bytes
from support.trees import BuiltTree, build_served_tree
from testbed.browsesite import assert_site_served
from testbed.images import SeededUpstream
from testbed.procs import LOOPBACK, Server, ServerGroup, require_binary
from testbed.registrish import start_registrish_serve

from registrish_lock import cli
from registrish_lock.lock.lockfile import LockedTag, make_lock, read_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.browse import model_from
from registrish_lock.serving.browse_page import render_site, render_tree_site, write_site
from registrish_lock.serving.routes import BROWSE_REL
from registrish_lock.tree.layout import Layout

pytestmark = pytest.mark.slow

SEEDED = ("app-oci", "app-docker", "multi", "multi-docker", "team/tools/app")


class CDPError(RuntimeError):
    pass


class CDP:
    """A minimal DevTools protocol session over one websocket (one target)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        # suppress_origin: Chromium refuses websocket clients that send an Origin header
        # unless started with --remote-allow-origins.
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    del self.events[i]
                    return event
            if time.monotonic() > deadline:
                raise CDPError(f"no {method} within {timeout} s")
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)

    def js(self, expression: str) -> Any:
        """Evaluate in the page (promises awaited) and return the value."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@dataclass
class Browser:
    server: Server
    port: int
    browser: CDP
    page: CDP
    #: Screenshots are kept here for a human to look at (the tests print the paths).
    shots: Path

    def goto(self, url: str) -> float:
        """Navigate and wait for the load event; returns seconds until it fired."""
        start = time.monotonic()
        self.page.call("Page.navigate", url=url)
        self.page.wait_event("Page.loadEventFired")
        return time.monotonic() - start

    def wait_loaded(self, count: int) -> None:
        """Until `count` repositories have their data file loaded (and drawn)."""
        _wait_for(
            lambda: (
                self.page.js("document.querySelectorAll('section[data-loaded]').length") == count
            ),
            timeout=30,
        )

    def click(self, selector: str) -> None:
        """A real mouse click (trusted event, user activation) at the element's centre.

        Aimed only once the element itself is what a click there would hit, at the same
        place twice in a row: while `content-visibility: auto` sections near the viewport
        take their real height, what follows moves, and on a busy machine that can take
        more than a frame or two.
        """
        aim = (
            f"(async () => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'});"
            " await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
            " const r = e.getBoundingClientRect();"
            " const x = r.x + r.width / 2, y = r.y + r.height / 2;"
            " return [x, y, e.contains(document.elementFromPoint(x, y))]; })()"
        )
        point: list[float] = []

        def on_target() -> bool:  # hit, and not moved since the last look
            x, y, hit = self.page.js(aim)
            settled = point == [x, y]
            point[:] = [x, y]
            return bool(hit) and settled

        _wait_for(on_target, timeout=30)
        x, y = point
        for kind in ("mousePressed", "mouseReleased"):
            self.page.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.page.js(f"document.querySelector({json.dumps(selector)}).select()")
        for kind in ("rawKeyDown", "keyUp"):  # clear it, as a person would
            self.page.call(
                "Input.dispatchKeyEvent", type=kind, key="Backspace", windowsVirtualKeyCode=8
            )
        for char in text:  # one input event per character, like a person typing
            self.page.call("Input.insertText", text=char)

    def screenshot(self, name: str) -> Path:
        data = self.page.call("Page.captureScreenshot", format="png")["data"]
        path = self.shots / name
        path.write_bytes(base64.b64decode(data))
        keep = os.environ.get("REGISTRISH_SCREENSHOTS")  # pytest prunes old tmp dirs
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(keep) / name)
        return path


def _devtools_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = require_binary("chromium")
    tmp = tmp_path_factory.mktemp("chromium")
    profile = tmp / "profile"
    argv = [
        binary,
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        *("--disable-dev-shm-usage", "--window-size=1280,900"),
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    server = Server("chromium", argv, log_dir=tmp).start()
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline:
                raise RuntimeError("chromium wrote no DevToolsActivePort within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        version = _devtools_json(port, "/json/version")
        pages = [t for t in _devtools_json(port, "/json/list") if t["type"] == "page"]
        browser = CDP(version["webSocketDebuggerUrl"])
        page = CDP(pages[0]["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Runtime.enable")
        # headless windows are never focused; the clipboard API needs a focused document
        page.call("Emulation.setFocusEmulationEnabled", enabled=True)
        yield Browser(server, port, browser, page, tmp_path_factory.mktemp("screenshots"))
        page.close()
        browser.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def synced(
    seeded_upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """`lock` + `sync` of the seeded images, served by `registrish serve`: (root, host)."""
    tmp = tmp_path_factory.mktemp("browse-e2e")
    host = seeded_upstream.host
    text = '[registry]\nroot = "public"\n\n[defaults]\nplatforms = ["linux/amd64", "linux/arm64"]\n'
    for name in SEEDED:
        text += f'\n[[image]]\nsource = "{host}/{name}"\nname = "{name}"\ntags = ["v1"]\n'
    text += f'\n[registries."{host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    assert cli.main(["lock", "-q", "-c", str(config)]) == 0
    assert cli.main(["sync", "-q", "-c", str(config)]) == 0
    root = tmp / "public"
    page = root / BROWSE_REL
    assert page.is_file()
    # a second sync with nothing to do leaves the page alone
    before = page.stat()
    assert cli.main(["sync", "-q", "-c", str(config)]) == 0
    assert (page.stat().st_ino, page.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    serving = start_registrish_serve(log_dir=tmp, root=root, config=config, name="serve")
    try:
        yield root, serving.host
    finally:
        serving.server.stop()


def _grant_clipboard(chromium: Browser, origin: str) -> None:
    chromium.browser.call(
        "Browser.grantPermissions",
        origin=origin,
        permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
    )


def _visible_tags(chromium: Browser) -> list[str]:
    value: list[str] = chromium.page.js(
        "Array.from(document.querySelectorAll('tbody tr')).filter(r => !r.hidden && "
        "!r.closest('section').hidden).map(r => r.closest('section').dataset.name + ':' + "
        "r.cells[0].textContent)"
    )
    return value


def test_page_renders_filters_and_copies(chromium: Browser, synced: tuple[Path, str]) -> None:
    root, host = synced
    origin = f"http://{host}"
    _grant_clipboard(chromium, origin)
    seconds = chromium.goto(origin + "/")
    chromium.wait_loaded(len(SEEDED))  # a small registry: every repository opens at load
    assert chromium.page.js("document.contentType") == "text/html"
    assert chromium.page.js("document.title") == "Container images"
    # every locked repository and tag is listed, the pull command names this host
    assert sorted(_visible_tags(chromium)) == sorted(f"{n}:v1" for n in SEEDED)
    commands = chromium.page.js(
        "Array.from(document.querySelectorAll('.pull code')).map(c => c.textContent)"
    )
    assert sorted(commands) == sorted(f"docker pull {host}/{n}:v1" for n in SEEDED)
    plats = chromium.page.js(
        "Array.from(document.querySelector('section[data-name=\"multi\"]')"
        ".querySelectorAll('ul.plats li')).map(li => li.textContent)"
    )
    assert [p.split(" · ")[0] for p in plats] == ["linux/amd64", "linux/arm64"]
    shot = chromium.screenshot("synced.png")

    # typing filters the rows (and hides repositories without a match)
    chromium.type("#q", "docker")
    assert sorted(_visible_tags(chromium)) == ["app-docker:v1", "multi-docker:v1"]
    assert chromium.page.js("document.getElementById('status').textContent") == (
        "2 of 5 tags match"
    )
    chromium.type("#q", "arm64 multi-docker")
    assert _visible_tags(chromium) == ["multi-docker:v1"]
    chromium.type("#q", "no-such-thing")
    assert _visible_tags(chromium) == []
    assert chromium.page.js("document.getElementById('none').hidden") is False
    chromium.type("#q", "tools")
    assert _visible_tags(chromium) == ["team/tools/app:v1"]
    shot_filtered = chromium.screenshot("filtered.png")

    # the copy button puts the exact pull command on the system clipboard
    chromium.click("section[data-name='team/tools/app'] button[data-label='Copy']")
    expected = f"docker pull {host}/team/tools/app:v1"
    _wait_for(lambda: chromium.page.js("document.documentElement.dataset.copied") == expected)
    assert chromium.page.js("navigator.clipboard.readText()") == expected
    shot_copied = chromium.screenshot("copied.png")
    # and the pinned one, by digest
    chromium.type("#q", "")
    chromium.click("section[data-name='multi'] button[data-label='Copy @digest']")
    lock = read_lock(root.parent / "registrish.lock")
    digest = lock.by_key()[("multi", "v1")].digest
    pinned = f"docker pull {host}/multi@{digest}"
    _wait_for(lambda: chromium.page.js("navigator.clipboard.readText()") == pinned)
    print(
        f"\n[browse] load of a 5-tag page: {seconds * 1000:.0f} ms; screenshots: "
        f"{shot}, {shot_filtered}, {shot_copied}"
    )


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def test_hostile_page_runs_nothing_injected(
    chromium: Browser, servers: ServerGroup, tmp_path: Path
) -> None:

    tags, manifests, configs = hostile_lock_and_bytes()
    site = render_site(model_from(make_lock("h", tags), manifests, configs))
    root = tmp_path / "public"
    (root / "v2").mkdir(parents=True)
    write_site(Layout(root), site)
    serving = start_registrish_serve(log_dir=tmp_path, root=root, name="serve")
    servers.add(serving.server)
    chromium.goto(f"{serving.url}/")
    chromium.wait_loaded(3)
    assert chromium.page.js("typeof window.pwned") == "undefined"
    assert chromium.page.js("document.images.length") == 0
    assert chromium.page.js("document.scripts.length") == 1
    commands = chromium.page.js(
        "Array.from(document.querySelectorAll('.pull code')).map(c => c.textContent)"
    )
    assert f"oras pull {serving.host}/a__b--c/x.y:Z_9.-" in commands
    assert chromium.page.js("document.querySelectorAll('button[data-text]').length") == 6
    evil = "</script><script>window.pwned=1</script>"
    plats = chromium.page.js(
        "Array.from(document.querySelectorAll('ul.plats li')).map(li => li.textContent)"
    )
    assert any(p.startswith("linux/" + evil) for p in plats)  # shown as text, intact
    chromium.type("#q", "pwned")  # platform text (from the lock and a config) is searched
    assert sorted(_visible_tags(chromium)) == ["onerror:v1", "script/alert:_--x.."]
    chromium.type("#q", "z_9")
    assert _visible_tags(chromium) == ["a__b--c/x.y:Z_9.-"]
    assert chromium.page.js("typeof window.pwned") == "undefined"


def test_opened_from_a_file_the_page_says_why_tags_are_missing(
    chromium: Browser, tmp_path: Path
) -> None:

    tags, manifests, configs = hostile_lock_and_bytes()
    write_site(Layout(tmp_path), render_site(model_from(make_lock("h", tags), manifests, configs)))
    chromium.goto((tmp_path / BROWSE_REL).as_uri())
    _wait_for(
        lambda: (
            chromium.page.js(
                "Array.from(document.querySelectorAll('.body p')).filter(p => "
                "p.textContent.indexOf('open this page from the registry') >= 0).length"
            )
            == 3
        )
    )
    assert chromium.page.js("typeof window.pwned") == "undefined"
    assert chromium.page.js("document.querySelectorAll('section.repo').length") == 3


def huge_site(repositories: int, per_repo: int) -> tuple[Any, int]:
    """issue 13's shape: `repositories` × `per_repo` single-platform tags."""
    digest = "sha256:" + "ab" * 32
    tags = [
        LockedTag(f"huge/r{n:03d}", f"1.{j // 100}.{j % 100}", f"oci:layouts/r{n:03d}",
                  digest, mediatypes.OCI_MANIFEST, 700, 1500)
        for n in range(repositories)
        for j in range(per_repo)
    ]  # fmt: skip
    return render_site(model_from(make_lock("huge", tags), {}, {})), len(tags)


def test_one_hundred_thousand_tags_first_load_and_a_repository_on_demand(
    chromium: Browser, servers: ServerGroup, tmp_path: Path
) -> None:
    site, total = huge_site(100, 1000)
    root = tmp_path / "public"
    (root / "v2").mkdir(parents=True)
    write_site(Layout(root), site)
    serving = start_registrish_serve(log_dir=tmp_path, root=root, name="serve")
    servers.add(serving.server)
    load = chromium.goto(f"{serving.url}/")
    _wait_for(lambda: chromium.page.js("document.documentElement.hasAttribute('data-ready')"))
    nav = chromium.page.js(
        "(() => { const n = performance.getEntriesByType('navigation')[0];"
        " return [n.transferSize, n.encodedBodySize, n.domContentLoadedEventEnd, n.loadEventEnd,"
        " performance.getEntriesByType('resource').length]; })()"
    )
    transfer, body, ready_ms, load_ms, fetched = nav
    assert body == len(site.page) < 1_000_000  # issue 13: first load ≤ 1 MB
    assert fetched == 0, "no data file is fetched before a repository is opened"
    assert chromium.page.js("document.getElementById('q').disabled") is False
    assert chromium.page.js("document.querySelectorAll('section.repo').length") == 100

    # open one repository: its data file is fetched, its newest versions come first
    start = time.monotonic()
    chromium.click("section[data-name='huge/r042'] summary")
    _wait_for(
        lambda: chromium.page.js(
            "!!document.querySelector(\"section[data-name='huge/r042'][data-loaded]\")"
        ),
        timeout=30,
    )
    assert chromium.page.js("document.querySelectorAll('section[data-loaded]').length") == 1
    opened = time.monotonic() - start
    rows = chromium.page.js(
        "Array.from(document.querySelectorAll(\"section[data-name='huge/r042'] tbody tr\"))"
        ".map(r => r.cells[0].textContent)"
    )
    assert rows[:3] == ["1.9.99", "1.9.98", "1.9.97"] and len(rows) == 200
    (data_rel,) = [r for r, d in site.data.items() if b'"huge/r042"' in d]
    data_size = len(site.data[data_rel])
    chromium.click("section[data-name='huge/r042'] button.more")
    _wait_for(
        lambda: (
            chromium.page.js(
                "document.querySelectorAll(\"section[data-name='huge/r042'] tbody tr\").length"
            )
            == 1000
        )
    )
    # the filter matches names at once, and tags once every repository is fetched
    chromium.type("#q", "r007")
    assert chromium.page.js("document.querySelectorAll('section.repo:not([hidden])').length") == 1
    chromium.type("#q", "1.2.35 r01")
    assert chromium.page.js("document.getElementById('all').hidden") is False
    chromium.click("#all")
    chromium.wait_loaded(100)
    _wait_for(lambda: len(_visible_tags(chromium)) == 10)
    assert sorted(_visible_tags(chromium)) == [f"huge/r01{i}:1.2.35" for i in range(10)]
    status = chromium.page.js("document.getElementById('status').textContent")
    assert status == f"10 of {total:,} tags match"
    shot = chromium.screenshot("hundred-thousand.png")
    print(
        f"\n[browse] {total:,} tags: first load {body:,} bytes ({transfer:,} on the wire), "
        f"no data fetched; DOMContentLoaded {ready_ms:.0f} ms, load event {load_ms:.0f} ms "
        f"(CDP round trip {load * 1000:.0f} ms); opening a repository ({data_size:,}-byte "
        f"data file, 200 rows drawn) {opened * 1000:.0f} ms incl. CDP; screenshot {shot}"
    )


@pytest.mark.parametrize("host", ["nginx", "caddy", "apache"])
def test_static_hosts_serve_the_page_and_its_data(host: str, tmp_path: Path) -> None:
    tree: BuiltTree = build_served_tree(tmp_path / "public")
    site = render_tree_site(tree.layout, tree.lock)
    require_binary({"nginx": "nginx", "caddy": "caddy", "apache": "apache2"}[host])
    server = start_host(host, tree, tmp_path / host)
    try:
        assert server.url is not None
        base = server.url.removeprefix("http://")
        # No page yet: a registry-style 404, never a listing. Asked on several connections so
        # every nginx worker has looked the page up (and could have cached the miss).
        assert {_get(base, "/")[0] for _ in range(16)} == {404}
        write_site(tree.layout, site)

        assert_site_served(lambda path: _get(base, path), site)
        assert _get(base, "/v2/")[0] == 200
        assert _get(base, "/index.htm")[0] == 404
    finally:
        server.stop()
        shutil.rmtree(tmp_path / host, ignore_errors=True)


def test_chromium_opens_a_repository_served_by_nginx(chromium: Browser, tmp_path: Path) -> None:
    require_binary("nginx")
    tree: BuiltTree = build_served_tree(tmp_path / "public")
    write_site(tree.layout, render_tree_site(tree.layout, tree.lock))
    server = start_host("nginx", tree, tmp_path / "nginx")
    try:
        assert server.url is not None
        chromium.goto(server.url + "/")
        chromium.wait_loaded(len(tree.lock.names()))
        host = server.url.removeprefix("http://")
        commands = chromium.page.js(
            "Array.from(document.querySelectorAll('.pull code')).map(c => c.textContent)"
        )
        assert sorted(commands) == sorted(
            f"docker pull {host}/{t.name}:{t.tag}" for t in tree.lock.tags
        )
    finally:
        server.stop()


def _get(hostport: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
