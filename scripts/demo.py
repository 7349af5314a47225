"""The main job end to end on the embedded server, with nothing but loopback.

Starts a throw-away upstream `docker-registry`, pushes a small two-platform image built
offline, then runs what a user runs: `registrish lock`, `registrish sync`,
`registrish serve`, a `skopeo copy` from the static tree, and `registrish check`.
Everything lives in a temporary directory (kept with --keep) and every server is stopped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from testbed.images import build_base_layout, skopeo_push
from testbed.procs import Server, free_port
from testbed.upstream import start_registry

#: The `registrish` command of the environment this script runs in (scripts/demo runs it
#: with .venv-demo's Python, where the checkout is installed).
REGISTRISH = [str(Path(sys.executable).with_name("registrish"))]


def step(title: str, argv: list[str], cwd: Path) -> None:
    shown = ["registrish", *argv[1:]] if argv[:1] == REGISTRISH else argv
    print(f"\n$ {shlex.join(shown)}", flush=True)
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True)
    print(f"  ({title}: {time.monotonic() - started:.1f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not Path(REGISTRISH[0]).is_file():
        parser.error(f"no {REGISTRISH[0]}: run `bash scripts/demo`, which installs it")
    work = Path(tempfile.mkdtemp(prefix="registrish-demo-"))
    servers: list[Server] = []
    try:
        print(f"working in {work}")
        upstream = start_registry(work / "upstream")
        servers.append(upstream.server)
        layout = build_base_layout(work / "build")
        skopeo_push(
            upstream, layout.path, layout.index_tag, "demo/hello", "1.0", all_platforms=True
        )
        skopeo_push(upstream, layout.path, layout.amd64_tag, "demo/hello", "1.1")
        print(f"upstream {upstream.url} has demo/hello:1.0 (linux/amd64 + linux/arm64) and :1.1")

        project = work / "project"
        project.mkdir()
        (project / "registrish.toml").write_text(
            f"""\
[registry]
root = "public"
hosts = ["nginx", "caddy"]

[[image]]
source = "{upstream.host}/demo/hello"
name = "hello"
versions = ">=1.0"

[registries."{upstream.host}"]
insecure = true
"""
        )
        step("lock", [*REGISTRISH, "lock"], project)
        print((project / "registrish.lock").read_text())
        step("sync", [*REGISTRISH, "sync"], project)

        port = free_port()
        serve = Server(
            "registrish serve",
            [*REGISTRISH, "-q", "serve", "--port", str(port)],
            log_dir=work,
            cwd=project,
        )
        servers.append(serve)
        serve.start()
        serve.wait_http(f"http://127.0.0.1:{port}/v2/", timeout=30)
        print(f"\nregistrish serve is up on http://127.0.0.1:{port}")
        for tag, arch in (("1.0", "amd64"), ("1.0", "arm64"), ("1.1", "amd64")):
            step(
                f"pull {arch}",
                [
                    "skopeo",
                    "copy",
                    "-q",
                    "--src-tls-verify=false",
                    "--override-arch",
                    arch,
                    f"docker://127.0.0.1:{port}/hello:{tag}",
                    f"dir:{work}/pulled-{tag}-{arch}",
                ],
                project,
            )
        step("check", [*REGISTRISH, "check", f"http://127.0.0.1:{port}"], project)
        print("\nAll done: the static tree in", project / "public", "served every pull.")
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
