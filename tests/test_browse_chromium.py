"""The browse page in a real headless Chromium (Debian's `chromium`), driven over the
DevTools protocol (websocket-client: no browser download, no chromedriver).

`registrish lock` + `sync` (registrish_lock.cli.main) mirror the seeded upstream of the
test bed; `registrish serve` serves the tree; Chromium loads `/`, and the tests type into
the filter box and click copy buttons with real input events, then read the clipboard.
Also: nginx, Caddy and Apache serve the page at `/` with their generated configs.
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
from support.locks import big_lock
from support.trees import BuiltTree, build_served_tree
from testbed.images import SeededUpstream
from testbed.procs import LOOPBACK, Server, ServerGroup, require_binary
from testbed.registrish import start_registrish_serve

from registrish_lock import cli
from registrish_lock.lock.lockfile import make_lock, read_lock
from registrish_lock.serving.browse import model_from, render_page, render_tree_page
from registrish_lock.serving.routes import BROWSE_REL

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

    def click(self, selector: str) -> None:
        """A real mouse click (trusted event, user activation) at the element's centre."""
        box = self.page.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
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
            raise AssertionError("condition not met within 5 s")
        time.sleep(0.05)


def test_hostile_page_runs_nothing_injected_and_works_from_a_file(
    chromium: Browser, tmp_path: Path
) -> None:
    from support.locks import hostile_lock_and_bytes

    tags, manifests, configs = hostile_lock_and_bytes()
    page = tmp_path / "index.html"
    page.write_bytes(render_page(model_from(make_lock("h", tags), manifests, configs)))
    chromium.goto(page.as_uri())
    assert chromium.page.js("typeof window.pwned") == "undefined"
    assert chromium.page.js("document.images.length") == 0
    assert chromium.page.js("document.scripts.length") == 1
    # opened from disk there is no host: the command keeps the placeholder
    commands = chromium.page.js(
        "Array.from(document.querySelectorAll('.pull code')).map(c => c.textContent)"
    )
    assert "oras pull HOST/a__b--c/x.y:Z_9.-" in commands
    assert chromium.page.js("document.querySelectorAll('button[data-text]').length") == 6
    chromium.type("#q", "pwned")  # platform text (from the lock and a config) is searched
    assert sorted(_visible_tags(chromium)) == ["onerror:v1", "script/alert:_--x.."]
    chromium.type("#q", "z_9")
    assert _visible_tags(chromium) == ["a__b--c/x.y:Z_9.-"]


def test_one_thousand_tags_load_and_filter_time_reported(
    chromium: Browser, servers: ServerGroup, tmp_path: Path
) -> None:
    tags, manifests = big_lock(names=50, tags_per_name=24)
    root = tmp_path / "public"
    (root / "v2").mkdir(parents=True)
    data = render_page(model_from(make_lock("big", tags), manifests, {}))
    (root / BROWSE_REL).write_bytes(data)
    serving = start_registrish_serve(log_dir=tmp_path, root=root, name="serve")
    servers.add(serving.server)
    load = chromium.goto(f"{serving.url}/")
    assert chromium.page.js("document.querySelectorAll('tbody tr').length") == 1200
    assert chromium.page.js("document.querySelectorAll('button[data-text]').length") == 2400
    ready = chromium.page.js(
        "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
    )
    start = time.monotonic()
    chromium.type("#q", "image-007 1.23")
    typed = time.monotonic() - start
    assert _visible_tags(chromium) == ["team/image-007:1.23.0"]
    filter_ms = chromium.page.js(
        "(() => { const q = document.getElementById('q'); const t = performance.now();"
        " q.value = 'arm64'; q.dispatchEvent(new Event('input')); return performance.now() - t; })()"
    )
    assert len(_visible_tags(chromium)) == 1200
    shot = chromium.screenshot("thousand.png")
    print(
        f"\n[browse] 1,200 tags: {len(data):,} bytes; load event after {load * 1000:.0f} ms "
        f"(DOMContentLoaded end {ready:.0f} ms); typing 14 characters (one filter pass "
        f"each, CDP round trips included) {typed * 1000:.0f} ms; one full filter pass "
        f"{filter_ms:.1f} ms; screenshot {shot}"
    )


@pytest.mark.parametrize("host", ["nginx", "caddy", "apache"])
def test_static_hosts_serve_the_page_at_the_root(host: str, tmp_path: Path) -> None:
    tree: BuiltTree = build_served_tree(tmp_path / "public")
    page = render_tree_page(tree.layout, tree.lock)
    if host == "nginx":
        require_binary("nginx")
    elif host == "caddy":
        require_binary("caddy")
    else:
        require_binary("apache2")
    server = start_host(host, tree, tmp_path / host)
    try:
        assert server.url is not None
        base = server.url.removeprefix("http://")
        # No page yet: a registry-style 404, never a listing. Asked on several connections so
        # every nginx worker has looked the page up (and could have cached the miss).
        assert {_get(base, "/")[0] for _ in range(16)} == {404}
        tree.layout.path(BROWSE_REL).write_bytes(page)
        for path in ("/", "/index.html"):
            status, ctype, body = _get(base, path)
            assert (status, ctype.replace(" ", "").lower()) == (200, "text/html;charset=utf-8")
            assert body == page
        assert _get(base, "/v2/")[0] == 200
        assert _get(base, "/index.htm")[0] == 404
    finally:
        server.stop()
        shutil.rmtree(tmp_path / host, ignore_errors=True)


def _get(hostport: str, path: str) -> tuple[int, str, bytes]:
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()
