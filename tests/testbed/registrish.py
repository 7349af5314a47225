"""Run the product itself in tests: a command as a subprocess, `registrish serve` on a free
loopback port."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, Server, free_port


def registrish(
    config: Path, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m registrish_lock COMMAND -c CONFIG ARGS…` (text output captured); with
    `check`, a non-zero exit fails the test with the command's stderr."""
    command, *rest = args
    proc = subprocess.run(
        [sys.executable, "-m", "registrish_lock", command, "-c", str(config), *rest],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"registrish {' '.join(args)} → {proc.returncode}\n{proc.stderr}")
    return proc


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
