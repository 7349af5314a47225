"""The vendors' own local servers for Cloudflare Pages and Netlify, from npm, offline on 127.0.0.1.

`.ci/run` installs the pinned versions (`NPM_PACKAGES`) into `npm_prefix()` (default
`~/.cache/registrish-testbed/npm`, or `$REGISTRISH_NPM_PREFIX`); never globally.

- **wrangler** (`wrangler pages dev DIR`) runs Cloudflare's Pages asset server and rules engine
  (`_headers`, `_redirects`, 404 handling) in workerd. Without `CLOUDFLARE_CF_FETCH_ENABLED=false`
  it fetches cf.json from the internet; without a compatibility date it refuses to start;
  without `WRANGLER_HIDE_BANNER` it checks for updates. It binds only what `--ip` says.
- **netlify-cli** (`netlify dev --offline`) runs a static server and a proxy applying
  `_headers`/`_redirects`. It has no bind-address option: `BIND_PRELOAD` (a
  `NODE_OPTIONS=--require` preload) makes every listen() use 127.0.0.1. Without
  `--internal-disable-edge-functions` the first request crashes setting up edge functions.
  Its proxy lets the static server's Content-Type and Cache-Control overwrite `_headers`
  (netlify/cli#990; production Netlify applies `_headers` last): `HEADERS_WIN_SHIM` is a
  **test-only** preload that restores production's order (a header the proxy already set
  from `_headers` is not overwritten by `writeHead`'s). Run without it, netlify-cli still
  proves which rules match which paths, and `_redirects`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .procs import LOOPBACK, Server, free_port, in_ci

NPM_PACKAGES = {"wrangler": "4.86.0", "netlify-cli": "26.2.0"}
_BINS = {"wrangler": "wrangler", "netlify-cli": "netlify"}

#: Every `net.Server.listen` on 127.0.0.1 (netlify-cli binds all interfaces otherwise).
BIND_PRELOAD = """\
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number") {
    args.splice(1, typeof args[1] === "string" ? 1 : 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && !args[0].path) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
"""

#: TEST-ONLY: `_headers` values the proxy set with setHeader() survive its writeHead(),
#: as on production Netlify (netlify/cli#990). Not a product behaviour.
HEADERS_WIN_SHIM = """\
const http = require("http");
const writeHead = http.ServerResponse.prototype.writeHead;
http.ServerResponse.prototype.writeHead = function (status, ...rest) {
  const last = rest.length - 1;
  if (last >= 0 && rest[last] && typeof rest[last] === "object" && !Array.isArray(rest[last])) {
    const kept = {};
    for (const [key, value] of Object.entries(rest[last])) {
      if (!this.hasHeader(key)) kept[key] = value;
    }
    rest[last] = kept;
  }
  return writeHead.call(this, status, ...rest);
};
"""


def npm_prefix() -> Path:
    default = Path.home() / ".cache" / "registrish-testbed" / "npm"
    return Path(os.environ.get("REGISTRISH_NPM_PREFIX", default))


def require_npm_bin(package: str) -> Path:
    """The installed, pinned `package`'s executable. Missing or another version:
    `pytest.fail` in CI, `pytest.skip` elsewhere (as `require_binary` does)."""
    modules = npm_prefix() / "node_modules"
    try:
        version = json.loads((modules / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = None
    binary = modules / ".bin" / _BINS[package]
    if version != NPM_PACKAGES[package] or not binary.exists():
        message = (
            f"{package}@{NPM_PACKAGES[package]} is not installed in {npm_prefix()} "
            f"(found {version}); .ci/run installs it"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return binary


def start_wrangler(root: Path, tmp: Path, *, port: int | None = None) -> Server:
    """`wrangler pages dev ROOT` on 127.0.0.1 (offline; state and logs under `tmp`)."""
    wrangler = require_npm_bin("wrangler")
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "CI": "1",
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_HIDE_BANNER": "true",
        "CLOUDFLARE_CF_FETCH_ENABLED": "false",
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "WRANGLER_LOG_PATH": str(tmp / "wrangler-logs"),
    }
    argv = [
        str(wrangler),
        *("pages", "dev", str(root), "--port", str(port), "--ip", LOOPBACK),
        *("--compatibility-date", "2025-01-01", "--inspector-port", str(free_port())),
        *("--persist-to", str(tmp / "state")),
    ]
    server = Server(
        "wrangler", argv, log_dir=tmp, env=env, cwd=tmp, url=f"http://{LOOPBACK}:{port}"
    )
    server.start()
    return server.wait_http(f"{server.url}/v2/", timeout=90)


def start_netlify(root: Path, tmp: Path, *, headers_win: bool, port: int | None = None) -> Server:
    """`netlify dev --offline` serving `root` on 127.0.0.1; `headers_win` adds the test-only
    `HEADERS_WIN_SHIM`."""
    netlify = require_npm_bin("netlify-cli")
    port = port or free_port()
    project = tmp / "project"
    project.mkdir(parents=True, exist_ok=True)
    # the static server behind the proxy defaults to the fixed port 3999
    (project / "netlify.toml").write_text(f"[dev]\nstaticServerPort = {free_port()}\n")
    preloads = [tmp / "bind.cjs"]
    preloads[0].write_text(BIND_PRELOAD)
    if headers_win:
        preloads.append(tmp / "headers-win-test-only.cjs")
        preloads[1].write_text(HEADERS_WIN_SHIM)
    env = {
        "CI": "1",
        "NETLIFY_TELEMETRY_DISABLED": "1",
        "NO_UPDATE_NOTIFIER": "1",
        "BROWSER": "none",
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "NODE_OPTIONS": " ".join(f"--require {p}" for p in preloads),
    }
    argv = [
        str(netlify),
        *("dev", "--offline", "--dir", str(root), "--port", str(port), "--no-open"),
        *("--skip-gitignore", "--geo", "mock", "--internal-disable-edge-functions"),
    ]
    name = "netlify-shim" if headers_win else "netlify"
    server = Server(name, argv, log_dir=tmp, env=env, cwd=project, url=f"http://{LOOPBACK}:{port}")
    server.start()
    return server.wait_http(f"{server.url}/v2/", timeout=90)


__all__ = [
    "NPM_PACKAGES",
    "npm_prefix",
    "require_npm_bin",
    "start_netlify",
    "start_wrangler",
]
