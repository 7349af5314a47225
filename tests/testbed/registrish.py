"""Run the product itself as a server in tests: `registrish serve` on a free loopback port."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, Server, free_port


@dataclass(frozen=True)
class Serving:
    server: Server
    port: int

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as an image reference names the registry."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def start_registrish_serve(
    *,
    log_dir: Path,
    root: Path | None = None,
    config: Path | None = None,
    name: str = "registrish-serve",
    quiet: bool = True,
) -> Serving:
    """Start `registrish serve` (on `root`, else the config's tree) and wait until `/v2/`
    answers 200. The caller stops `.server`, or adds it to a `ServerGroup`. Without `config` a path that does not exist is passed, so no
    `./registrish.toml` of the working directory is read."""
    port = free_port()
    argv = [sys.executable, "-m", "registrish_lock", "serve", "--port", str(port)]
    argv += ["-c", str(config if config is not None else log_dir / "none.toml")]
    if quiet:
        argv.append("-q")
    if root is not None:
        argv += ["--root", str(root)]
    url = f"http://{LOOPBACK}:{port}"
    serving = Serving(Server(name, argv, log_dir=log_dir, url=url), port)
    serving.server.start().wait_http(f"{serving.url}/v2/", status=200)
    return serving
